"""verify's checks on plain arrays: no model, no runtime."""

import numpy as np
import pytest

from trimkit.verify.checks import (
    accuracy,
    accuracy_check,
    agreement_checks,
    ceil_digits,
    decisions_agree,
    logits_check,
    numerics,
    passing_atol,
    polygraphy_compare,
    speed_check,
)


def _outputs(n=10, labels=4, layers=3, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, labels)).astype(np.float32)  # (N, labels)
    counts = rng.integers(1, 50, (n, layers, 2)).astype(np.int64)  # (N, layers, 2)
    return logits, counts


def test_equal_outputs_pass_every_check():
    logits, counts = _outputs()
    num = numerics(logits, counts, logits.copy(), counts.copy(), np.full(10, 0.5), atol=1e-4, rtol=1e-3)
    assert num["max_abs_err"] == 0.0 and num["decision_flips"] == 0 and num["mean_flops_ratio"] == 0.5
    assert num["argmax_agreement"] == 1.0 and num["keep_counts_agreement"] == 1.0
    check, needed = logits_check(logits, counts, logits.copy(), counts.copy(), atol=1e-4, rtol=1e-3, runtime="ort")
    assert check.passed and needed == 0.0 and check.value == 0.0
    assert all(c.passed for c in agreement_checks(num, 0.99))


def test_a_flipped_decision_is_counted_not_compared():
    logits, counts = _outputs()
    art_logits, art_counts = logits.copy(), counts.copy()
    art_counts[2, 1, 0] += 1  # sample 2 kept one more vision token in layer 1 ...
    art_logits[2] += 100.0  # ... so its logits differ legitimately
    assert decisions_agree(counts, art_counts).tolist() == [i != 2 for i in range(10)]
    num = numerics(logits, counts, art_logits, art_counts, np.ones(10), atol=1e-4, rtol=1e-3)
    assert num["decision_flips"] == 1 and num["keep_counts_agreement"] == 0.9 and num["max_abs_err"] == 0.0
    check, _ = logits_check(logits, counts, art_logits, art_counts, atol=1e-4, rtol=1e-3, runtime="ort")
    assert check.passed and "9 samples with equal keep_counts" in check.detail
    argmax, kc = agreement_checks(num, 0.95)
    assert argmax.passed and not kc.passed and kc.value == 0.9 and "1 samples" in kc.detail


def test_perturbed_logits_fail_with_the_passing_atol_in_the_hint():
    logits, counts = _outputs()
    art = logits + np.random.default_rng(1).normal(0, 0.01, logits.shape).astype(np.float32)
    check, needed = logits_check(logits, counts, art, counts, atol=1e-4, rtol=1e-3, runtime="ort")
    assert not check.passed and 1e-4 < needed <= check.value
    hint = float(check.detail.rsplit("--atol ", 1)[1])
    assert hint >= needed
    ok, _ = logits_check(logits, counts, art, counts, atol=hint, rtol=1e-3, runtime="ort")
    assert ok.passed


def test_non_finite_logits_fail_at_any_tolerance():
    logits, counts = _outputs()
    art = logits.copy()
    art[0, 0] = np.inf
    check, needed = logits_check(logits, counts, art, counts, atol=1e9, rtol=1e9, runtime="ort")
    assert not check.passed and needed is None and "no --atol passes" in check.detail


def test_no_comparable_samples_is_a_failure():
    logits, counts = _outputs(n=3)
    check, _ = logits_check(logits, counts, logits, counts + 1, atol=1.0, rtol=1.0, runtime="ort")
    assert not check.passed


def test_accuracy_drop_in_points():
    y = np.array([0, 1, 2, 3])
    eye = np.eye(4, dtype=np.float32)  # (4, 4): argmax i for row i
    wrong = np.roll(eye, 1, axis=1)
    art = np.concatenate([eye[:3], wrong[3:]])  # 3 of 4 right
    acc = accuracy(y, eye, eye, art)
    assert acc == {"pytorch_full": 1.0, "pytorch_trimmed": 1.0, "artifact": 0.75}
    assert not accuracy_check(acc, 1.0).passed
    check = accuracy_check(acc, 25.0)
    assert check.passed and check.value == pytest.approx(25.0)


def test_speed_check_judges_the_slowest_shape():
    rows = [{"speedup_vs_full": 1.5}, {"speedup_vs_full": 1.1}, {"speedup_vs_full": None}]
    assert speed_check(rows, "speedup_vs_full", 1.2).value == 1.1
    assert not speed_check(rows, "speedup_vs_full", 1.2).passed
    assert speed_check(rows, "speedup_vs_full", 1.0).passed
    assert not speed_check([], "speedup_vs_full", 1.0).passed


def test_passing_atol_is_the_smallest_tolerance_polygraphy_accepts():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 5, (64, 13)).astype(np.float32)
    art = ref + rng.normal(0, 0.3, ref.shape).astype(np.float32)
    atol = passing_atol(ref, art, 0.1)
    assert 0 < atol < np.abs(art - ref).max() + 1e-6
    assert polygraphy_compare(ref, art, atol, 0.1, "onnxruntime")
    assert not polygraphy_compare(ref, art, atol * 0.999, 0.1, "onnxruntime")
    assert passing_atol(ref, ref, 0.1) == 0.0
    assert passing_atol(ref, ref * 1.05, 0.1) == 0.0  # every element within rtol
    nan = art.copy()
    nan[3, 4] = np.nan
    assert passing_atol(ref, nan, 0.1) == np.inf and not polygraphy_compare(ref, nan, 1e9, 0.1, "onnxruntime")
    assert ceil_digits(0.5487) == "0.549" and float(ceil_digits(0.54849)) >= 0.54849 and ceil_digits(0) == "0"
