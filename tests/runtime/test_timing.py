"""Interleaved timing: turns, warm-up, seconds per unit."""

import time

import pytest

from trimkit.runtime.timing import latency_summary, median_seconds, speedup, time_interleaved


def test_variants_take_turns_after_one_warm_up_each():
    calls = []
    passes = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    ticks = []
    times = time_interleaved(passes, 3, tick=lambda: ticks.append(1))
    assert calls == ["a", "b"] * 4  # warm-up round, then 3 timed rounds in turn
    assert len(ticks) == 6 and {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}


def test_a_pass_returning_a_count_is_timed_per_unit():
    def four_batches():
        time.sleep(0.02)
        return 4

    def runner_output():
        time.sleep(0.02)
        return ("logits", "keep_counts")  # not a count: one unit

    med = median_seconds(time_interleaved({"per_batch": four_batches, "per_call": runner_output}, 3))
    assert med["per_batch"] < med["per_call"] / 2
    assert med["per_call"] >= 0.02


def test_latency_summary():
    s = latency_summary([0.010, 0.020, 0.030], batch=4)
    assert s["p50_ms"] == pytest.approx(20.0) and s["throughput"] == pytest.approx(200.0)
    assert 20.0 < s["p90_ms"] <= 30.0


def test_spread_and_noisy_speedups():
    quiet = latency_summary([0.010] * 9 + [0.0101], batch=1)
    assert quiet["spread"] < 0.05 and quiet["p10_ms"] == pytest.approx(10.0)
    stall = latency_summary([0.001, 0.001, 0.001, 0.001, 0.050], batch=1)  # one stall in five: the median holds
    assert stall["spread"] == 0.0 and stall["p90_ms"] > 10
    noisy = latency_summary([0.001, 0.002, 0.003, 0.004, 0.005], batch=1)  # the middle half spreads over 2/3
    assert noisy["spread"] == pytest.approx(2 / 3)
    s = speedup({"p50_ms": 40.0, "spread": 0.1}, {"p50_ms": 10.0, "spread": 0.1})
    assert s["ratio"] == pytest.approx(4.0) and not s["noisy"]
    assert speedup(noisy, quiet)["noisy"] and speedup(quiet, noisy)["noisy"]  # either side's noise counts
    assert speedup({"p50_ms": 1.0}, {"p50_ms": 2.0}) == {"ratio": 0.5, "noisy": False, "spread": 0.0}
    assert speedup(quiet, noisy, noisy_spread=100.0)["noisy"] is False
