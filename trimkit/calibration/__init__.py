"""Calibration: hit a compute budget without retraining (budget.py); INT8 Q/DQ (int8.py, imported lazily)."""

from .budget import (
    adaptive_profile,
    calibrate_budget,
    calibrate_heads,
    match_adaptive_budget,
    match_static_budget,
    measure,
    shift_thresholds,
    static_trim_config,
)

__all__ = ["adaptive_profile", "calibrate_budget", "calibrate_heads", "match_adaptive_budget", "match_static_budget", "measure", "shift_thresholds",
           "static_trim_config"]
