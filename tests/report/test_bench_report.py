"""The bench report's plots stay readable (log latency axis, nothing drawn over anything, whole layers)
and its Markdown flags noisy ratios."""

import pytest

from trimkit.report.bench import _markdown, accuracy_figure, kept_tokens_figure, latency_figure
from trimkit.report.plots import pyplot

from .records import timing


@pytest.fixture
def result():
    targets = ["native", "0.7", "0.5", "0.35"]
    runtimes = ["onnxruntime full", *(f"onnxruntime adaptive@{t}" for t in targets), "pytorch off",
                "pytorch prune@native"]
    # PyTorch eager 540x slower than ONNX Runtime, and noisy
    latency = [{"batch": b, "text_len": n,
                **{name: timing(5.4 * b * n if "pytorch" in name else 0.01 * b * n + 0.005 * i,
                                spread=0.6 if "pytorch" in name else 0.02) for i, name in enumerate(runtimes)}}
               for b in (1, 8) for n in (8, 16, 24)]
    # "0.5" and "native" at the same cost and accuracy: their labels would print on top of each other
    points = [{"label": t, "target": None, "threshold_offset": 0.0, "accuracy": 0.99, "flops_ratio": r,
               "flops_p10": r - 0.1, "flops_p90": r + 0.1, "executed_flops_ratio": r + 0.05,
               "keep_per_layer": [[100 * r, 10 * r], [60 * r, 8 * r], [40 * r, 6 * r]],
               "static": {"accuracy": 0.97, "flops_ratio": r}}
              for t, r in zip(targets, (0.5, 0.7, 0.5, 0.35))]
    return {"checkpoint": "m.pt", "data": "easyvqa", "samples": 1000, "calibration_samples": 500, "threads": 2,
            "repeats": 10, "seconds": 60.0, "runtimes": runtimes, "latency": latency, "points": points,
            "full": {"accuracy": 0.996, "executed_flops_ratio": 1.04}, "trimmed_layers": [2, 3, 4],
            "executed": {"batch_size": 256, "layout": "packed", "head_impl": "gather"}}


def test_latency_plot_is_log_scaled_with_its_legend_clear_of_the_panels(result):
    fig = latency_figure(result)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axes = fig.axes
        assert len(axes) == 2 and all(ax.get_yscale() == "log" for ax in axes)
        (legend,) = fig.legends
        box = legend.get_window_extent(renderer)
        for ax in axes:  # the legend overlaps no panel, tick labels and axis labels included
            assert not box.overlaps(ax.get_tightbbox(renderer))
            assert [t.get_text() for t in ax.get_xticklabels()] == ["8", "16", "24"]
        a, b = axes
        assert not a.get_tightbbox(renderer).overlaps(b.get_tightbbox(renderer))
        lo, hi = axes[0].get_ylim()
        assert hi / lo > 540  # both ends of a 540x gap are on the chart
    finally:
        pyplot().close(fig)


def test_layer_axes_have_whole_ticks_only(result):
    fig = kept_tokens_figure(result)
    try:
        fig.canvas.draw()
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks and all(float(t).is_integer() for t in ticks)
    finally:
        pyplot().close(fig)


def test_accuracy_plot_labels_do_not_overlap(result):
    fig = accuracy_figure(result)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        boxes = [t.get_window_extent(renderer) for t in fig.axes[0].texts]
        assert len(boxes) == 4
        assert not any(boxes[i].overlaps(boxes[j]) for i in range(4) for j in range(i + 1, 4))
    finally:
        pyplot().close(fig)


def test_markdown_flags_noisy_timings_and_states_both_flops_ratios(result):
    md = _markdown(result)
    assert "~1036.80" in md  # PyTorch at batch 8, text 24: noisy
    assert "executed (mean)" in md and "0.550" in md
    assert "~" not in md.split("| 1 | 8 |")[1].split("|")[0]  # ONNX Runtime full: quiet
