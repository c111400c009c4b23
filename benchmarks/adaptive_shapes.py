"""The adaptive part of SmartTrim on `shapes` (issue 3): cost follows the scene, and adaptive beats static.

Stages (trimkit commands, skipped when their output exists):
  init small on shapes -> backbone (--no-trim) -> SmartTrim at FLOPs target 0.5.
Then, on the test split:
  - per-instance FLOPs ratio against the number of objects in the scene (plot + table);
  - static per-layer keep ratios calibrated (on the validation split) to the same mean FLOPs as the
    adaptive model, and the accuracy of both at that equal mean cost.
Writes benchmarks/results/adaptive_shapes.{json,md,png}.

    python benchmarks/adaptive_shapes.py [--workdir build/bench/shapes] [--backbone-epochs 8] [--trim-epochs 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import RESULTS, ROOT, load_json, run_stage, save_json

import trimkit
from trimkit.calibration import adaptive_profile, match_static_budget, measure
from trimkit.data import load_dataset
from trimkit.train.evaluate import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench" / "shapes")
    ap.add_argument("--backbone-epochs", type=float, default=8)
    ap.add_argument("--trim-epochs", type=float, default=2)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the json/md/png go")
    args = ap.parse_args()
    results = args.results
    results.mkdir(parents=True, exist_ok=True)
    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    log = wd / "log.txt"
    out_json = results / "adaptive_shapes.json"
    rec = load_json(out_json)
    rec.update({"preset": args.preset, "data": "shapes", "target": args.target, "backbone_epochs": args.backbone_epochs,
                "trim_epochs": args.trim_epochs})
    seed = ["--seed", str(args.seed)]
    run_stage("init", ["init", "--preset", args.preset, "--data", "shapes", "--out", wd / "init.pt", *seed],
              wd / "init.pt", log, rec)
    run_stage("backbone", ["train", wd / "init.pt", "--data", "shapes", "--no-trim", "--epochs", args.backbone_epochs,
                           "--lr", "5e-4", "--out", wd / "backbone.pt", "--quiet", *seed], wd / "backbone.pt", log, rec)
    run_stage("smarttrim", ["train", wd / "backbone.pt", "--data", "shapes", "--target-ratio", args.target,
                            "--epochs", args.trim_epochs, "--lr", "1e-4", "--out", wd / "smarttrim.pt", "--quiet",
                            *seed], wd / "smarttrim.pt", log, rec)

    model = trimkit.load_checkpoint(wd / "smarttrim.pt")
    data = load_dataset("shapes", tokenizer=model.tokenizer, labels=model.labels, image_size=model.config.image_size,
                        seed=args.seed)
    res = evaluate(model, data.test, modes=("off", "prune"))
    ratios = torch.tensor(res["per_instance"]["prune"]["ratio"])
    correct = torch.tensor(res["per_instance"]["prune"]["correct"])
    n_obj = data.test.extra["n_objects"]
    by_count = {}
    for k in sorted(set(n_obj.tolist())):
        sel = n_obj == k
        r = ratios[sel]
        by_count[int(k)] = {"questions": int(sel.sum()), "ratio_mean": float(r.mean()), "ratio_std": float(r.std()),
                            "accuracy": float(correct[sel].float().mean())}
    counts = sorted(by_count)
    means = [by_count[k]["ratio_mean"] for k in counts]
    rho = _spearman(n_obj.float(), ratios)
    rec["adaptive"] = {"accuracy": res["prune"]["accuracy"], "accuracy_full": res["off"]["accuracy"],
                       "flops_ratio": res["prune"]["flops_ratio"], "by_objects": by_count,
                       "spearman_objects_vs_ratio": rho, "rises_with_objects": rises(means, rho)}
    # static at equal mean FLOPs, calibrated on the validation split
    profile = adaptive_profile(model, data.val, samples=2000)
    static_trim, cal = match_static_budget(model, data.val, profile["flops_ratio"], samples=2000, profile=profile)
    adaptive_trim = model.trim
    model.trim = static_trim
    static = measure(model, data.test, "static", samples=None)
    model.trim = adaptive_trim
    adaptive = measure(model, data.test, "prune", samples=None)
    rec["static_vs_adaptive"] = {
        "calibration": {"split": "val", "samples": profile["samples"], "static_val_ratio": cal["flops_ratio"]},
        "static_keep_ratios": static_trim.static_keep_ratios, "static_head_keep": static_trim.static_head_keep,
        "adaptive": adaptive, "static": static, "adaptive_beats_static": adaptive["accuracy"] > static["accuracy"]}
    _plot(by_count, results / "adaptive_shapes.png", args.target)
    save_json(out_json, rec)
    _markdown(rec, results)


RISE_MIN_SPEARMAN = 0.2  # per instance: a clear, not incidental, rank correlation
RISE_MIN_SPAN = 0.05  # FLOPs ratio, most objects minus fewest


def rises(means: list[float], rho: float) -> bool:
    """Cost rises with the number of objects: rank correlation >= 0.2 per instance, and the mean ratio at
    the most objects exceeds the one at the fewest by >= 0.05 (a positive sign alone proves nothing)."""
    return rho >= RISE_MIN_SPEARMAN and means[-1] - means[0] >= RISE_MIN_SPAN


def _spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    rx = x.argsort().argsort().float()
    ry = y.argsort().argsort().float()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))


def _plot(by_count: dict, path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(by_count)
    m = [by_count[k]["ratio_mean"] for k in ks]
    s = [by_count[k]["ratio_std"] for k in ks]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.errorbar(ks, m, yerr=s, marker="o", capsize=4, label="SmartTrim (adaptive), mean ± std")
    ax.axhline(target, ls="--", color="gray", label=f"training target {target}")
    ax.set_xlabel("objects in the scene")
    ax.set_ylabel("per-instance FLOPs ratio")
    ax.set_title("shapes: compute spent per instance")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _markdown(rec: dict, results: Path) -> None:
    a, sv = rec["adaptive"], rec["static_vs_adaptive"]
    lines = [f"# Adaptive pruning on `shapes` (`{rec['preset']}` preset, this CPU)", "",
             f"SmartTrim at FLOPs target {rec['target']} ({rec['trim_epochs']} epochs from a backbone trained "
             f"{rec['backbone_epochs']} epochs). Test split. Reproduce: `python benchmarks/adaptive_shapes.py`.", "",
             "![FLOPs ratio vs objects](adaptive_shapes.png)", "",
             "| objects | questions | FLOPs ratio mean | std | accuracy |", "|---|---|---|---|---|"]
    for k, r in sorted(a["by_objects"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {k} | {r['questions']} | {r['ratio_mean']:.3f} | {r['ratio_std']:.3f} | "
                     f"{100 * r['accuracy']:.2f}% |")
    lines += ["", f"Spearman correlation (objects, FLOPs ratio): {a['spearman_objects_vs_ratio']:.3f}; rises with "
              f"the number of objects (Spearman ≥ {RISE_MIN_SPEARMAN}, mean ≥ +{RISE_MIN_SPAN} from fewest to most "
              "objects): "
              f"{'yes' if a['rises_with_objects'] else 'NO'}.", "",
              "At equal mean FLOPs (static per-layer keep ratios calibrated on the validation split to the adaptive "
              "model's mean cost, same weights and trimmer scores):", "",
              "| model | accuracy | mean FLOPs ratio |", "|---|---|---|",
              f"| adaptive (SmartTrim) | {100 * sv['adaptive']['accuracy']:.2f}% | {sv['adaptive']['flops_ratio']:.3f} |",
              f"| static keep ratios | {100 * sv['static']['accuracy']:.2f}% | {sv['static']['flops_ratio']:.3f} |",
              "", f"Adaptive beats static: {'yes' if sv['adaptive_beats_static'] else 'NO'}.", "",
              "Commands:", "", "```", *rec.get("commands", {}).values(), "```", ""]
    (results / "adaptive_shapes.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
