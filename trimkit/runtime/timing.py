"""Interleaved timing and latency summaries: one implementation for verify, bench, calibration and
the benchmarks.

Variants take turns within every repeat (one call of each per round), so that a noisy machine slows
them alike; each gets one warm-up call first.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, TypeVar

import numpy as np

__all__ = ["time_interleaved", "latency_summary", "median_seconds"]

K = TypeVar("K", bound=Hashable)


def time_interleaved(passes: Mapping[K, Callable[[], Any]], repeats: int, *,
                     tick: Callable[[], None] | None = None) -> dict[K, list[float]]:
    """Seconds per unit of work of each pass, one entry per repeat.

    A pass runs one variant's work and may return how many units (batches) it ran as an int; any
    other return value (a runner's outputs) counts as one. `tick` is called after every timed pass
    (progress bars)."""
    for run in passes.values():
        run()
    times: dict[K, list[float]] = {k: [] for k in passes}
    for _ in range(repeats):
        for key, run in passes.items():
            t0 = time.perf_counter()
            n = run()
            times[key].append((time.perf_counter() - t0) / (n if isinstance(n, int) and n > 0 else 1))
            if tick is not None:
                tick()
    return times


def median_seconds(times: Mapping[K, list[float]]) -> dict[K, float]:
    return {k: statistics.median(ts) for k, ts in times.items()}


def latency_summary(seconds: list[float], batch: int) -> dict[str, float]:
    """p50/p90 latency in ms and throughput (samples/s at p50) of a batch's timings."""
    p50 = statistics.median(seconds)
    return {"p50_ms": 1000 * p50, "p90_ms": 1000 * float(np.quantile(seconds, 0.9)), "throughput": batch / p50}
