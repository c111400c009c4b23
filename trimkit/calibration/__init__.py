"""Calibration: hit a compute budget without retraining (budget.py)."""

from .budget import adaptive_profile, match_static_budget, measure, static_trim_config

__all__ = ["adaptive_profile", "match_static_budget", "measure", "static_trim_config"]
