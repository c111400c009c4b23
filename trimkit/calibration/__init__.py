"""Calibration: hit a compute budget without retraining (budget.py)."""

from .budget import (
    adaptive_profile,
    match_adaptive_budget,
    match_static_budget,
    measure,
    shift_thresholds,
    static_trim_config,
)

__all__ = ["adaptive_profile", "match_adaptive_budget", "match_static_budget", "measure", "shift_thresholds",
           "static_trim_config"]
