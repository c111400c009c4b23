"""The adaptive part of SmartTrim on `shapes` (issue 3): cost follows the scene, and adaptive beats static.

Stages (skipped when their output exists; a stopped training stage is continued with --resume):
  init small on shapes -> `trimkit pretrain --task tokens --data shapes` (the vision encoder names what lies under
  each patch token, on scenes in no VQA split: a stand-in for the pretrained encoders VLMs start from) -> backbone
  (`trimkit train --no-trim`) -> SmartTrim at each FLOPs target (0.5, 0.3, 0.2), in bf16 by default.
Then, for each target, on the test split (skipped when the results file has it for the same checkpoint):
  - per-instance FLOPs ratio against the number of objects in the scene (plot + table);
  - static per-layer keep ratios calibrated (on the validation split) to the same mean FLOPs as the
    adaptive model, and the accuracy of both at that equal mean cost.
Writes benchmarks/results/adaptive_shapes.{json,md,png}.

    python benchmarks/adaptive_shapes.py [--workdir build/bench/shapes] [--backbone-epochs 8] [--trim-epochs 2]
        [--targets 0.5,0.3,0.2] [--precision bf16|fp32] [--vision-pretrain-steps 1500 (0: none)]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from _common import (
    RESULTS,
    ROOT,
    load_json,
    merge_save_json,
    pretrain_lines,
    pretrain_stages,
    record_pretrain,
    reproduce_command,
    run_stage,
)

import trimkit
from trimkit.calibration import adaptive_profile, match_static_budget, measure
from trimkit.data import load_dataset
from trimkit.data.shapes import QUESTION_TYPES
from trimkit.evaluate import evaluate
from trimkit.fileio import sha256_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench" / "shapes")
    ap.add_argument("--backbone-epochs", type=float, default=8)
    ap.add_argument("--trim-epochs", type=float, default=2)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16",
                    help="trimkit train --precision (bf16: ~1.6x faster steps on CPUs with AVX512-BF16)")
    ap.add_argument("--targets", default="0.5,0.3,0.2",
                    help="FLOPs targets, one SmartTrim run each (separate processes may run different targets; the "
                         "results file is merged under a lock)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vision-pretrain-steps", type=int, default=1500,
                    help="first `trimkit pretrain --task tokens --data shapes` (the vision encoder names what lies under each "
                         "patch token, on scenes in no VQA split, as VLMs start from pretrained encoders); "
                         "0: train the backbone from scratch")
    ap.add_argument("--reeval", action="store_true", help="evaluate again even when the results file has the run")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the json/md/png go")
    args = ap.parse_args()
    results = args.results
    results.mkdir(parents=True, exist_ok=True)
    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    log = wd / "log.txt"
    out_json = results / "adaptive_shapes.json"
    reproduce = reproduce_command("adaptive_shapes.py", sys.argv[1:], {"--targets": True, "--reeval": False})
    rec = {"reproduce": reproduce, "preset": args.preset, "data": "shapes",
           "backbone_epochs": args.backbone_epochs,
           "trim_epochs": args.trim_epochs, "precision": args.precision, "runs": {}}
    seed = ["--seed", str(args.seed)]
    train_opts = [*seed, *(["--precision", args.precision] if args.precision != "fp32" else [])]
    run_stage("init", ["init", "--preset", args.preset, "--data", "shapes", "--out", wd / "init.pt", *seed],
              wd / "init.pt", log, rec)
    start = pretrain_stages(wd, "shapes", {"tokens": args.vision_pretrain_steps}, train_opts, log, rec)
    run_stage("backbone", ["train", start, "--data", "shapes", "--no-trim", "--epochs", args.backbone_epochs,
                           "--lr", "5e-4", "--out", wd / "backbone.pt", "--quiet", *train_opts], wd / "backbone.pt", log, rec)
    record_pretrain(wd / "backbone.pt", rec)
    rec["backbone_sha256"] = sha256_file(wd / "backbone.pt")
    if out_json.exists() and load_json(out_json).get("backbone_sha256") != rec["backbone_sha256"]:
        print(f"[new ] {out_json} holds runs of another backbone: starting it afresh", flush=True)
        out_json.unlink()  # never mix runs of two backbones in one table
    for target in (float(t) for t in args.targets.split(",")):
        ckpt = wd / f"smarttrim-{target}.pt"
        run_stage(f"smarttrim-{target}", ["train", wd / "backbone.pt", "--data", "shapes", "--target-ratio", target,
                                          "--epochs", args.trim_epochs, "--lr", "1e-4", "--out", ckpt, "--quiet",
                                          *train_opts], ckpt, log, rec)
        digest = sha256_file(ckpt)
        old = load_json(out_json).get("runs", {}).get(str(target), {})
        if old.get("checkpoint_sha256") == digest and not args.reeval:
            print(f"[skip] evaluation at {target}: {out_json} has it for this checkpoint", flush=True)
            continue
        rec["runs"][str(target)] = {"target": target, "checkpoint_sha256": digest,
                                    **evaluate_run(ckpt, args.seed)}
        rec = merge_save_json(out_json, rec)
    rec = merge_save_json(out_json, rec)
    _plot(rec["runs"], results / "adaptive_shapes.png")
    _markdown(rec, results)


def evaluate_run(ckpt: Path, seed: int) -> dict:
    """Test split: per-instance FLOPs ratio against the number of objects; adaptive vs static at equal cost."""
    model = trimkit.load_checkpoint(ckpt)
    data = load_dataset("shapes", tokenizer=model.tokenizer, labels=model.labels, image_size=model.config.image_size,
                        seed=seed)
    res = evaluate(model, data.test, modes=("off", "prune"))
    ratios = torch.tensor(res["per_instance"]["prune"]["ratio"])
    correct = torch.tensor(res["per_instance"]["prune"]["correct"])
    n_obj = data.test.extra["n_objects"]
    by_count = {str(int(k)): _group(ratios, correct, n_obj == k) for k in sorted(set(n_obj.tolist()))}
    means = [by_count[k]["ratio_mean"] for k in sorted(by_count, key=int)]
    rho = _spearman(n_obj.float(), ratios)
    out = {"adaptive": {"accuracy": res["prune"]["accuracy"], "accuracy_full": res["off"]["accuracy"],
                        "flops_ratio": res["prune"]["flops_ratio"], "by_objects": by_count,
                        "by_question_type": by_question_type(ratios, correct, data.test.extra["qtype_id"], n_obj),
                        "spearman_objects_vs_ratio": rho, "rises_with_objects": rises(means, rho)}}
    # static at equal mean FLOPs, calibrated on the validation split
    profile = adaptive_profile(model, data.val, samples=2000)
    static_trim, cal = match_static_budget(model, data.val, profile["flops_ratio"], samples=2000, profile=profile)
    adaptive_trim = model.trim
    model.trim = static_trim
    static = measure(model, data.test, "static", samples=None)
    model.trim = adaptive_trim
    adaptive = measure(model, data.test, "prune", samples=None)
    out["static_vs_adaptive"] = {
        "calibration": {"split": "val", "samples": profile["samples"], "static_val_ratio": cal["flops_ratio"]},
        "static_keep_ratios": static_trim.static_keep_ratios, "static_head_keep": static_trim.static_head_keep,
        "adaptive": adaptive, "static": static, "adaptive_beats_static": adaptive["accuracy"] > static["accuracy"]}
    return out


def by_question_type(ratios: torch.Tensor, correct: torch.Tensor, qtype_id: torch.Tensor,
                     n_obj: torch.Tensor) -> dict:
    """Per-instance FLOPs ratio and accuracy by the kind of question (what else the cost could follow), and
    within each kind how the ratio follows the number of objects (Spearman, mean ratio per object count)."""
    out = {}
    for i, t in enumerate(QUESTION_TYPES):
        sel = qtype_id == i
        out[t] = {**_group(ratios, correct, sel), "spearman_objects": _spearman(n_obj[sel].float(), ratios[sel]),
                  "ratio_by_objects": {str(int(k)): float(ratios[sel & (n_obj == k)].mean())
                                       for k in sorted(set(n_obj[sel].tolist()))}}
    return out


def _group(ratios: torch.Tensor, correct: torch.Tensor, sel: torch.Tensor) -> dict:
    """Questions, FLOPs ratio mean/std and accuracy of the instances in `sel`."""
    return {"questions": int(sel.sum()), "ratio_mean": float(ratios[sel].mean()),
            "ratio_std": float(ratios[sel].std()), "accuracy": float(correct[sel].float().mean())}


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


def _plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(runs.items(), key=lambda kv: -float(kv[0]))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2), dpi=120)
    for i, (t, run) in enumerate(ordered):
        by = run["adaptive"]["by_objects"]
        ks = sorted(by, key=int)
        color = f"C{i}"
        ax.errorbar([int(k) + 0.06 * i for k in ks], [by[k]["ratio_mean"] for k in ks],
                    yerr=[by[k]["ratio_std"] for k in ks], marker="o", capsize=3, color=color,
                    label=f"target {t}: Spearman {run['adaptive']['spearman_objects_vs_ratio']:+.2f}")
        ax.axhline(float(t), ls=":", color=color, lw=0.8)
    ax.set_xlabel("objects in the scene")
    ax.set_ylabel("per-instance FLOPs ratio (mean ± std)")
    ax.set_title("shapes: compute SmartTrim spends per instance")
    ax.legend(fontsize=8, loc="center right")
    t, run = ordered[len(ordered) // 2]  # the middle target: by kind of question
    for j, (q, g) in enumerate(run["adaptive"]["by_question_type"].items()):
        if "ratio_by_objects" not in g:
            continue
        ks = sorted(g["ratio_by_objects"], key=int)
        bx.plot([int(k) for k in ks], [g["ratio_by_objects"][k] for k in ks], marker="o", color=f"C{j}",
                label=f"{q}: ρ {g['spearman_objects']:+.2f}, acc {100 * g['accuracy']:.0f}%")
    bx.set_xlabel("objects in the scene")
    bx.set_ylabel("mean per-instance FLOPs ratio")
    bx.set_title(f"target {t}: by kind of question")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _qtype_cell(g: dict) -> str:
    rho = f", ρ {g['spearman_objects']:+.2f}" if "spearman_objects" in g else ""
    return f"{g['ratio_mean']:.3f} ± {g['ratio_std']:.3f}, {100 * g['accuracy']:.1f}%{rho}"


def _markdown(rec: dict, results: Path) -> None:
    runs = sorted(rec["runs"].values(), key=lambda r: -r["target"])
    lines = [f"# Adaptive pruning on `shapes` (`{rec['preset']}` preset, this CPU)", "",
             f"SmartTrim at each FLOPs target ({rec['trim_epochs']} epochs from one backbone trained "
             f"{rec['backbone_epochs']} epochs). Test split. Reproduce: "
             f"`{rec.get('reproduce', 'python benchmarks/adaptive_shapes.py')}`.", "",
             *pretrain_lines(rec),
             "![FLOPs ratio vs objects](adaptive_shapes.png)", "",
             "Per-instance FLOPs ratio (mean ± std) and accuracy by the number of objects in the scene:", "",
             "| objects | questions | "
             + " | ".join(f"target {r['target']}: ratio | target {r['target']}: accuracy" for r in runs) + " |",
             "|---|---|" + "---|---|" * len(runs)]
    first = runs[0]["adaptive"]["by_objects"]
    for k in sorted(first, key=int):
        cells = [f"{r['adaptive']['by_objects'][k]['ratio_mean']:.3f} ± {r['adaptive']['by_objects'][k]['ratio_std']:.3f}"
                 f" | {100 * r['adaptive']['by_objects'][k]['accuracy']:.2f}%" for r in runs]
        lines.append(f"| {k} | {first[k]['questions']} | " + " | ".join(cells) + " |")
    lines += ["", f"Cost rises with the number of objects when the per-instance Spearman correlation is ≥ "
              f"{RISE_MIN_SPEARMAN} and the mean ratio at the most objects exceeds the one at the fewest by ≥ "
              f"{RISE_MIN_SPAN}. Adaptive vs static: static per-layer keep ratios calibrated on the validation split "
              "to the adaptive model's mean cost (same weights and trimmer scores), both on the test split.", "",
              "| target | mean FLOPs ratio (p10 / p90) | Spearman | span (most − fewest) | rises | accuracy untrimmed "
              "| adaptive accuracy (ratio) | static accuracy (ratio) | adaptive beats static |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        a, sv = r["adaptive"], r["static_vs_adaptive"]
        by = a["by_objects"]
        ks = sorted(by, key=int)
        span = by[ks[-1]]["ratio_mean"] - by[ks[0]]["ratio_mean"]
        fr = a["flops_ratio"]
        lines.append(f"| {r['target']} | {fr['mean']:.3f} ({fr['p10']:.2f} / {fr['p90']:.2f}) | "
                     f"{a['spearman_objects_vs_ratio']:+.3f} | {span:+.3f} | "
                     f"{'yes' if a['rises_with_objects'] else 'NO'} | {100 * a['accuracy_full']:.2f}% | "
                     f"{100 * sv['adaptive']['accuracy']:.2f}% ({sv['adaptive']['flops_ratio']:.3f}) | "
                     f"{100 * sv['static']['accuracy']:.2f}% ({sv['static']['flops_ratio']:.3f}) | "
                     f"{'yes' if sv['adaptive_beats_static'] else 'NO'} |")
    if all("by_question_type" in r["adaptive"] for r in runs):
        lines += ["", "Per-instance FLOPs ratio (mean ± std) and accuracy by the kind of question; ρ: Spearman "
                  "correlation of the ratio with the number of objects among the questions of that kind:", "",
                  "| question | questions | " + " | ".join(f"target {r['target']}" for r in runs) + " |",
                  "|---|---|" + "---|" * len(runs)]
        first = runs[0]["adaptive"]["by_question_type"]
        for t in first:
            cells = [_qtype_cell(r["adaptive"]["by_question_type"][t]) for r in runs]
            lines.append(f"| {t} | {first[t]['questions']} | " + " | ".join(cells) + " |")
    lines += ["", "Commands:", "", "```", *rec.get("commands", {}).values(), "```", ""]
    (results / "adaptive_shapes.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
