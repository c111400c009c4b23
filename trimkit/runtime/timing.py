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

__all__ = ["time_interleaved", "latency_summary", "median_seconds", "speedup", "NOISY_SPREAD", "SPREAD"]

# A timing whose repeats spread wider than this (interquartile range over the median) is noise-dominated: a
# ratio of two such timings says more about the machine's load than about the runners, so it is flagged, not
# headlined. The quartiles, not p10/p90: single millisecond calls on a quiet 2-core machine jitter by tens
# of percent at their tails (thread-pool wake-ups), which says nothing about the median the ratio uses.
NOISY_SPREAD = 0.25
SPREAD = "(p75 - p25) / p50"

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
    """p10/p50/p90 latency in ms, throughput (samples/s at p50) and spread (`SPREAD`, 0 for one repeat) of a
    batch's timings."""
    p10, p25, p75, p90 = (float(q) for q in np.quantile(seconds, [0.1, 0.25, 0.75, 0.9]))
    p50 = statistics.median(seconds)
    return {"p50_ms": 1000 * p50, "p90_ms": 1000 * p90, "p10_ms": 1000 * p10, "throughput": batch / p50,
            "spread": (p75 - p25) / p50 if p50 > 0 else 0.0}


def speedup(reference: dict[str, float], candidate: dict[str, float], *,
            noisy_spread: float = NOISY_SPREAD) -> dict[str, float | bool]:
    """How many times faster `candidate` is than `reference` (two `latency_summary` records, p50 over p50),
    and whether that ratio is noise: either side's spread above `noisy_spread`. Records without a spread
    (older JSON) are taken as quiet."""
    spread = max(reference.get("spread", 0.0), candidate.get("spread", 0.0))
    return {"ratio": reference["p50_ms"] / candidate["p50_ms"], "noisy": bool(spread > noisy_spread),
            "spread": spread}
