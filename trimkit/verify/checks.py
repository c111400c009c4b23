"""Pure checks over collected arrays: no model, no runtime, no files.

Inputs are what the runners returned, concatenated over the data: logits float32 (N, labels),
keep_counts int64 (N, layers, 2), labels int64 (N,). A sample whose keep_counts differ from
PyTorch's (a score within float noise of the threshold) legitimately has other logits, so the
logits comparison runs over the samples whose pruning decisions agree; the flips are counted by
the keep_counts check instead.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .report import Check

__all__ = ["decisions_agree", "numerics", "logits_check", "agreement_checks", "accuracy", "accuracy_check",
           "speed_check", "polygraphy_compare", "passing_atol", "ceil_digits"]


def decisions_agree(ref_counts: np.ndarray, art_counts: np.ndarray) -> np.ndarray:
    """(N,) bool: the artifact kept the same number of tokens as PyTorch in every trimmed layer."""
    return (art_counts == ref_counts).reshape(len(ref_counts), -1).all(axis=1)


def numerics(ref_logits: np.ndarray, ref_counts: np.ndarray, art_logits: np.ndarray, art_counts: np.ndarray,
             flops_ratio: np.ndarray, *, atol: float, rtol: float) -> dict[str, Any]:
    """Errors (over samples with equal keep_counts), agreements and the mean FLOPs ratio."""
    n = len(ref_logits)
    same = decisions_agree(ref_counts, art_counts)
    d = np.abs(art_logits - ref_logits)[same]  # (n_same, labels)
    abs_err = d.max(axis=1) if d.size else np.zeros(0)
    rel_err = (d / (np.abs(ref_logits[same]) + 1e-6)).max(axis=1) if d.size else np.zeros(0)
    agree = art_logits.argmax(1) == ref_logits.argmax(1)
    return {
        "samples": n, "atol": atol, "rtol": rtol,
        "max_abs_err": float(abs_err.max()) if abs_err.size else 0.0,
        "mean_abs_err": float(np.mean(abs_err.tolist())) if abs_err.size else 0.0,
        "max_rel_err": float(rel_err.max()) if rel_err.size else 0.0,
        "mean_rel_err": float(np.mean(rel_err.tolist())) if rel_err.size else 0.0,
        "argmax_agreement": int(agree.sum()) / n, "keep_counts_agreement": int(same.sum()) / n,
        "decision_flips": n - int(same.sum()), "mean_flops_ratio": float(np.mean(flops_ratio.tolist())),
    }


def logits_check(ref_logits: np.ndarray, ref_counts: np.ndarray, art_logits: np.ndarray, art_counts: np.ndarray,
                 *, atol: float, rtol: float, runtime: str) -> tuple[Check, float | None]:
    """Polygraphy's elementwise compare over the samples with equal keep_counts, and the smallest atol that
    would pass at this rtol (None when non-finite logits make every atol fail)."""
    same = decisions_agree(ref_counts, art_counts)
    ref, art = ref_logits[same], art_logits[same]  # (n_same, labels)
    within = polygraphy_compare(ref, art, atol, rtol, runtime)
    needed = passing_atol(ref, art, rtol)
    worst = float(np.abs(art - ref).max(axis=1).max()) if ref.size else 0.0
    hint = ("" if within or not ref.size else "; non-finite logits: no --atol passes" if math.isinf(needed)
            else f"; passes at this rtol with --atol {ceil_digits(needed)}")
    check = Check("logits_within_tolerance", within, worst, atol, "<=",
                  f"Polygraphy elementwise compare over the {int(same.sum())} samples with equal "
                  f"keep_counts (atol {atol}, rtol {rtol}); max |artifact - pytorch| shown" + hint,
                  # elementwise |artifact - pytorch| <= atol + rtol |pytorch|: a max error above atol that passes on
                  # a large logit must not read as a pass against atol alone
                  display=f"<= {rtol:g}*|ref| + {atol:g}")
    return check, needed if math.isfinite(needed) else None


def agreement_checks(num: dict[str, Any], min_agreement: float) -> list[Check]:
    """Argmax and keep_counts agreement, from `numerics`."""
    return [Check("argmax_agreement", num["argmax_agreement"] >= min_agreement, num["argmax_agreement"],
                  min_agreement, ">="),
            Check("keep_counts_agreement", num["keep_counts_agreement"] >= min_agreement,
                  num["keep_counts_agreement"], min_agreement, ">=",
                  f"{num['decision_flips']} samples with a different pruning decision")]


def accuracy(labels: np.ndarray, full_logits: np.ndarray, trimmed_logits: np.ndarray,
             art_logits: np.ndarray) -> dict[str, float]:
    """Task accuracy of PyTorch untrimmed, PyTorch trimmed and the artifact."""
    return {name: float((logits.argmax(1) == labels).mean())
            for name, logits in (("pytorch_full", full_logits), ("pytorch_trimmed", trimmed_logits),
                                 ("artifact", art_logits))}


def accuracy_check(acc: dict[str, float], max_drop_points: float) -> Check:
    """The artifact loses at most `max_drop_points` accuracy points against untrimmed PyTorch."""
    drop = 100 * (acc["pytorch_full"] - acc["artifact"])
    return Check("accuracy_drop_points", drop <= max_drop_points + 1e-9, drop, max_drop_points, "<=",
                 f"PyTorch full {100 * acc['pytorch_full']:.2f}% -> artifact {100 * acc['artifact']:.2f}% "
                 f"(PyTorch trimmed {100 * acc['pytorch_trimmed']:.2f}%)")


def speed_check(rows: list[dict[str, Any]], key: str, min_speedup: float) -> Check:
    """The slowest shape's speedup (`key`: speedup_vs_full or speedup_vs_pytorch) reaches `min_speedup`; a
    row's `<key>_noisy` flag (`timing.speedup`) is named in the detail, since the verdict then rests on noise."""
    measured = [r for r in rows if r.get(key) is not None]
    worst = min(measured, key=lambda r: r[key]) if measured else None
    detail = "slowest shape" + ("; its timings are noisy (spread over the limit): rerun on a quiet machine"
                                if worst is not None and worst.get(f"{key}_noisy") else "")
    value = worst[key] if worst is not None else None
    return Check(f"min_{key}", value is not None and value >= min_speedup, value, min_speedup, ">=", detail)


def polygraphy_compare(ref: np.ndarray, art: np.ndarray, atol: float, rtol: float, runtime: str) -> bool:
    """Polygraphy's elementwise comparator on two logits arrays (no rows -> False: nothing was compared)."""
    if ref.size == 0:
        return False
    from polygraphy.comparator import Comparator, RunResults, SimpleCompareFunc
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.logger import G_LOGGER

    results = RunResults()
    for name, arr in (("pytorch", ref), (runtime, art)):
        results.append((name, [IterationResult({"logits": arr}, runner_name=name)]))
    old = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.ERROR
    try:
        acc = Comparator.compare_accuracy(
            results, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol, check_error_stat="elemwise"))
    finally:
        G_LOGGER.module_severity = old
    return bool(acc)


def passing_atol(ref: np.ndarray, art: np.ndarray, rtol: float) -> float:
    """The smallest atol at which `polygraphy_compare` passes at this rtol: an element fails Polygraphy's
    elementwise check only when its absolute difference exceeds atol and its relative one (to |ref|) rtol.
    NaN or Inf in either -> inf (Polygraphy fails those elements at any tolerance)."""
    ref = ref.astype(np.float64)
    diff = np.abs(art.astype(np.float64) - ref)
    if not np.isfinite(diff).all():
        return math.inf
    rel = diff / np.where(ref == 0, np.finfo(np.float64).eps, np.abs(ref))
    over = diff[rel > rtol]
    return float(over.max()) if over.size else 0.0


def ceil_digits(x: float, digits: int = 3) -> str:
    """x rounded up to `digits` significant digits (a tolerance printed for reuse must not round down)."""
    if x <= 0:
        return "0"
    scale = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return f"{math.ceil(x / scale) * scale:.{digits}g}"
