"""Interleaved timing: turns, warm-up, seconds per unit."""

import time

import pytest

from trimkit.runtime.timing import latency_summary, median_seconds, time_interleaved


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
