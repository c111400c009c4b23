"""An untrained model with random (but input-dependent) trimmers at a given mean FLOPs ratio, for speed
studies only (issue 4: how the adaptive export's speedup depends on model size on this CPU).

Its answers mean nothing; what it keeps is what matters for speed: the trimmers get an ordinary random
init (as `--no-curriculum` starts), so scores follow the hidden states per instance, and one global threshold
offset is calibrated (by bisection, as `trimkit calibrate budget` does) so the mean `prune`-mode
FLOPs ratio on easy-VQA validation questions is the target. Then time it with
`python benchmarks/export_speed.py --ckpt NAME=OUT`.

    python benchmarks/synthetic_trimmed.py --preset small --hidden 384 --target 0.5 --out build/bench/synth/h384.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trimkit.calibration.budget import match_adaptive_budget
from trimkit.checkpoint import save_checkpoint
from trimkit.data import load_dataset
from trimkit.factory import new_model
from trimkit.train.loop import randomize_trimmers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--hidden", type=int, default=None, help="hidden size (FFN 4x, heads hidden/32)")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--samples", type=int, default=500, help="validation questions for the calibration")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    over = {}
    if args.hidden:
        over.update(hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_heads=max(1, args.hidden // 32))
    if args.image_size:
        over["image_size"] = args.image_size
    model = new_model(args.preset, "easyvqa", seed=args.seed, **over)
    randomize_trimmers(model, args.seed)  # as --no-curriculum starts: scores follow the hidden states
    data = load_dataset("easyvqa", tokenizer=model.tokenizer, labels=model.labels,
                        image_size=model.config.image_size, seed=args.seed, splits=("train",))
    model.trim, cal = match_adaptive_budget(model, data.val, args.target, samples=args.samples, seed=args.seed)
    model.meta.update(synthetic=True, calibration={"target": args.target, **cal})
    save_checkpoint(model, args.out, force=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {args.preset} {over} {n / 1e6:.1f} M parameters, "
          f"FLOPs ratio {cal['flops_ratio']:.3f} on {args.samples} validation questions")


if __name__ == "__main__":
    main()
