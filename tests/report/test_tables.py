"""The console tables fit 100 columns whole: short labels, a legend underneath, no header cut short."""

import pytest
from rich.console import Console

from trimkit.report.tables import render_bench, render_eval, render_verify
from trimkit.runtime.timing import speedup
from trimkit.verify.report import Check, VerifyReport

from .records import timing

WIDTH = 100


def rendered(render, data, width: int = WIDTH) -> str:
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    render(data, console)
    return console.export_text()


def flat(text: str) -> str:
    """The text with its wrapping undone (legends wrap at the console's width)."""
    return " ".join(text.split())


def assert_fits(text: str, width: int = WIDTH) -> None:
    assert "…" not in text, text  # rich cuts a header or cell it cannot fit with an ellipsis
    too_long = [line for line in text.splitlines() if len(line) > width]
    assert not too_long, too_long


def verify_report(runtimes: tuple[str, ...], layout: str = "packed") -> VerifyReport:
    numerics = {"samples": 500, "mean_flops_ratio": 0.499, "mean_executed_flops_ratio": 0.545,
                "executed_batch_size": 8, "max_abs_err": 2.8e-5, "mean_abs_err": 9e-6, "max_rel_err": 1.3e-4,
                "decision_flips": 0}
    report = VerifyReport("models/easyvqa-small.pt", "build/walk/trim.onnx", runtimes[0], "adaptive", layout=layout)
    report.numerics = numerics
    report.runtimes = {rt: {"describe": {"version": "1.32.0", "precision": "fp32", "threads": 2},
                            "numerics": numerics, "accuracy": None} for rt in runtimes}
    report.task = {"accuracy": {"pytorch_full": 0.996, "pytorch_trimmed": 0.998, "artifact": 0.998}}
    names = {rt: "artifact" if i == 0 else f"artifact[{rt}]" for i, rt in enumerate(runtimes)}
    fulls = {rt: "full-export" if i == 0 else f"full-export[{rt}]" for i, rt in enumerate(runtimes)}
    for b, n in ((1, 8), (8, 24)):
        row = {"batch": b, "text_len": n}
        for rt in runtimes:
            row[names[rt]] = timing(6.47)
            row[fulls[rt]] = timing(12345.6)
        row["pytorch-prune"] = timing(3494.0, spread=0.9 if b == 1 else 0.02)  # noisy at batch 1
        row["speedups"] = {}
        for rt in runtimes:
            full, torch_ = speedup(row[fulls[rt]], row[names[rt]]), speedup(row["pytorch-prune"], row[names[rt]])
            row["speedups"][rt] = {"vs_full": full["ratio"], "vs_full_noisy": full["noisy"],
                                   "vs_pytorch": torch_["ratio"], "vs_pytorch_noisy": torch_["noisy"]}
        report.speed.append(row)
    report.checks = [Check("logits_within_tolerance", True, 2.8e-5, 1e-4, "<=", runtime=rt) for rt in runtimes]
    report.checks.append(Check("keep_counts_agreement", False, 0.97, 0.99, ">=", "3 of 100 samples flip a decision",
                               runtime=runtimes[0]))
    return report


@pytest.mark.parametrize("runtimes", [("onnxruntime",), ("onnxruntime", "openvino")])
def test_verify_tables_fit_100_columns_with_the_layout_and_noisy_ratios_flagged(runtimes):
    text = rendered(render_verify, verify_report(runtimes))
    assert_fits(text)
    if len(runtimes) == 1:  # a log or a terminal without a width: rich's 80 columns
        assert_fits(rendered(render_verify, verify_report(runtimes), width=80), width=80)
    for header in ("p50 ms", "spread", "vs full", "vs torch"):
        assert header in text
    assert "adaptive (packed)" in text and "full" in text and "torch prune" in text
    assert "~540×" in text and "1908×" in text  # noisy at batch 1 (flagged), quiet at batch 8 (not)
    assert "~: either side's repeats spread" in flat(text)  # the legend says what the marker means
    assert "decided 0.499" in flat(text) and "executed 0.545" in flat(text)
    if len(runtimes) > 1:
        assert "adaptive (packed) ov" in text and "ov: openvino" in flat(text)


def test_verify_names_a_padded_artifact():
    assert "adaptive (padded)" in rendered(render_verify, verify_report(("onnxruntime",), layout="padded"))


def bench_result(targets: list[str]) -> dict:
    runtimes = ["onnxruntime full", *(f"onnxruntime adaptive@{t}" for t in targets), "pytorch off",
                f"pytorch prune@{targets[0]}"]
    latency = [{"batch": b, "text_len": n, **{name: timing(1234.5, spread=0.5 if "pytorch" in name else 0.01)
                                              for name in runtimes}} for b in (1, 8) for n in (8, 16, 24)]
    points = [{"label": t, "accuracy": 0.99, "flops_ratio": 0.5, "flops_p10": 0.4, "flops_p90": 0.6,
               "executed_flops_ratio": 0.56, "static": {"accuracy": 0.97, "flops_ratio": 0.5}} for t in targets]
    return {"data": "easyvqa", "samples": 1000, "repeats": 10, "runtimes": runtimes, "latency": latency,
            "full": {"accuracy": 0.996, "executed_flops_ratio": 1.04}, "points": points,
            "executed": {"batch_size": 256, "layout": "packed", "head_impl": "gather"}}


@pytest.mark.parametrize("targets", [["native", "0.7", "0.5", "0.35"], [f"0.{i}" for i in range(9, 0, -1)]])
def test_bench_tables_fit_100_columns(targets):
    text = rendered(render_bench, bench_result(targets))
    assert_fits(text)
    for header in ("decided", "executed", "static", "full", "a@0.5", "pt off", f"pt@{targets[0]}"):
        assert header in text
    assert "~1234" in text and " 1234 " in text  # noisy PyTorch timings flagged, quiet ONNX Runtime ones not
    assert "executed: what the model ran in batches of up to 256, packed layout, gathered heads" in flat(text)
    assert "(continued)" in text if len(targets) > 5 else "(continued)" not in text


def test_eval_table_states_decided_and_executed_flops():
    flops = {"mean": 0.5, "std": 0.1, "p10": 0.4, "p50": 0.5, "p90": 0.6}
    modes = {m: {"accuracy": 0.99, "flops_ratio": flops, "executed_flops_ratio": {"mean": 0.56, "p50": 0.55},
                 "keep_per_layer": [[100.0, 8.0], [60.0, 6.0]]} for m in ("off", "mask", "prune")}
    report = {"checkpoint": "models/easyvqa-small.pt", "data": "easyvqa", "split": "test", "samples": 1000,
              "modes": ["off", "mask", "prune"], "batch_size": 256, "layout": "packed", "head_impl": "gather",
              "trimmed_layers": [{"depth": 2, "kind": "encoder"}, {"depth": 3, "kind": "fusion"}], **modes}
    text = rendered(render_eval, report)
    assert_fits(text)
    assert "decided" in text and "executed" in text and "0.560" in text
    assert "what the model ran in batches of up to 256, packed layout, gathered heads" in flat(text)
