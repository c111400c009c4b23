"""Benchmark scripts (run as `python benchmarks/NAME.py`); a package so that tests import their helpers."""
