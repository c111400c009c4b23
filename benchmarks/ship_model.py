"""Train (or reuse) the model that ships with the repository and write it under models/ with its provenance.

The recipe is the `small` SmartTrim run of `smarttrim_easyvqa.py` (its `smarttrim-0.5` row): the `small` preset
with `--pool-product`, 600 steps of vision pre-training, a 6-epoch backbone with the vision encoder frozen, then
SmartTrim at FLOPs target 0.5 for 2 epochs. The trained checkpoint is stored with fp16 weights (half the bytes);
the stored model is then evaluated as it loads (fp16-rounded weights in float32) on the full easy-VQA test
split, and those are the numbers the provenance records.

    python benchmarks/ship_model.py [--workdir build/ship/easyvqa-small] [--name easyvqa-small]

Stages whose output exists are skipped (a stopped training stage is continued with --resume), so the script
resumes; about an hour on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from _common import ROOT, rel_to_root, run_stage, save_json, trimkit_cmd

MODELS = ROOT / "models"
TARGET = 0.5


def recipe(wd: Path) -> list[tuple[str, list, Path]]:
    """The training stages: (name, trimkit arguments, output)."""
    return [
        ("init", ["init", "--preset", "small", "--data", "easyvqa", "--out", wd / "init.pt", "--seed", "0",
                  "--pool-product"], wd / "init.pt"),
        ("pretrain-tokens", ["pretrain", wd / "init.pt", "--task", "tokens", "--data", "easyvqa", "--steps", "600",
                             "--out", wd / "init-vision.pt", "--quiet", "--seed", "0"], wd / "init-vision.pt"),
        ("backbone", ["train", wd / "init-vision.pt", "--data", "easyvqa", "--no-trim", "--epochs", "6.0", "--lr",
                      "0.0005", "--out", wd / "backbone.pt", "--quiet", "--freeze", "vision", "--seed", "0"],
         wd / "backbone.pt"),
        ("smarttrim", ["train", wd / "backbone.pt", "--data", "easyvqa", "--target-ratio", str(TARGET), "--epochs",
                       "2.0", "--lr", "0.0001", "--out", wd / "smarttrim.pt", "--quiet", "--eval-every", "271",
                       "--freeze", "vision", "--seed", "0"], wd / "smarttrim.pt"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "ship" / "easyvqa-small")
    ap.add_argument("--name", default="easyvqa-small")
    ap.add_argument("--trained", type=Path, default=None,
                    help="a checkpoint already trained by this recipe (skips the training stages; its workdir "
                         "records are read from the same folder)")
    args = ap.parse_args()

    import torch

    from trimkit.checkpoint import load_checkpoint, save_checkpoint
    from trimkit.fileio import sha256_file

    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    record: dict = {}
    stages = recipe(wd)
    if args.trained is None:
        for name, targs, out in stages:
            run_stage(name, [str(a) for a in targs], out, wd / "log.txt", record)
        trained = stages[-1][2]
    else:
        trained = args.trained
        record["commands"] = {name: "trimkit " + " ".join(rel_to_root(a) if isinstance(a, Path) else a
                                                           for a in targs) for name, targs, _ in stages}
    MODELS.mkdir(exist_ok=True)
    out = MODELS / f"{args.name}.pt"
    model = load_checkpoint(trained)
    save_checkpoint(model, out, force=True, storage="fp16", meta={"shipped": args.name})
    # the shipped file as it loads, on the full test split
    ev = wd / f"{args.name}.eval.json"
    subprocess.run(trimkit_cmd("eval", out, "--data", "easyvqa", "--split", "test", "--json", ev), check=True,
                   cwd=ROOT)
    res = json.loads(ev.read_text())
    state = torch.load(trained, map_location="cpu", weights_only=True).get("meta", {})
    prov = {
        "name": args.name,
        "file": rel_to_root(out),
        "sha256": sha256_file(out),
        "bytes": out.stat().st_size,
        "storage": "fp16 weights, loaded as float32 (the numbers below are of the stored model)",
        "recipe": "small preset, --pool-product, 600 vision pre-training steps, 6-epoch backbone with the vision "
                  f"encoder frozen, SmartTrim at FLOPs target {TARGET} for 2 epochs (seed 0)",
        "commands": [record["commands"][name] for name, _, _ in stages],
        "training_seconds": record.get("seconds", {}),
        "data": "easyvqa (the easy-vqa package): trained on its train split, evaluated on the full test split",
        "test": {"questions": res["samples"]} | {
            mode: {"accuracy": res[mode]["accuracy"], "flops_ratio": res[mode]["flops_ratio"]}
            for mode in ("off", "prune")},
        "trained_meta_keys": sorted(state),
    }
    save_json(MODELS / f"{args.name}.json", prov)
    p, o = res["prune"], res["off"]
    print(f"wrote {rel_to_root(out)} ({out.stat().st_size / 1e6:.1f} MB): test accuracy {100 * p['accuracy']:.2f}% "
          f"trimmed (untrimmed {100 * o['accuracy']:.2f}%), FLOPs ratio {p['flops_ratio']['mean']:.3f}")


if __name__ == "__main__":
    main()
