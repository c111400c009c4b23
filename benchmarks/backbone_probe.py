"""Why the easy-VQA backbone stalls (issue 3): accuracy per answer type, and whether the image encoder can
learn shapes at all.

1. Per answer type (shape / colour / yes-no) accuracy of a trained backbone checkpoint on the easy-VQA
   test split, in `off` mode.
2. Shape probe: the `small` preset's vision encoder alone (stem + encoder layers + a linear head on the
   vision [CLS]), trained from scratch to name the shape of easy-VQA train images (labels from the
   "what is the X shape?" questions), one run per image stem (`patch`, `conv`), same seed and steps;
   validation accuracy on held-out images every 100 steps.
3. The full VQA model trained the same way (off mode, AdamW, same steps), per answer type on validation.

Writes benchmarks/results/backbone_probe.{json,md}.

    python benchmarks/backbone_probe.py [--ckpt build/bench/easyvqa/backbone.pt] [--steps 400]
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import RESULTS, ROOT, rel_to_root, save_json
from rich.console import Console
from rich.progress import Progress

from trimkit.checkpoint import load_checkpoint
from trimkit.config import preset_config
from trimkit.data import easyvqa, load_dataset
from trimkit.data.dataset import _resize, to_pixel_values
from trimkit.data.easyvqa import SHAPES
from trimkit.factory import new_model
from trimkit.models.meter import MeterModel


def answer_kind(answer: str) -> str:
    return "yes/no" if answer in ("yes", "no") else "shape" if answer in SHAPES else "colour"


def per_kind_accuracy(model: MeterModel, split, idx: torch.Tensor) -> dict[str, float]:
    model.eval()
    hit, n = collections.Counter(), collections.Counter()
    with torch.no_grad():
        for i in range(0, len(idx), 500):
            rows = idx[i:i + 500]
            pv, ids, mask, y = split.batch(rows, trim_padding=True)
            ok = (model(pv, ids, mask, mode="off").logits.argmax(1) == y).tolist()
            for label, o in zip(y.tolist(), ok):
                k = answer_kind(model.labels[label])
                hit[k] += o
                n[k] += 1
    out = {k: hit[k] / n[k] for k in sorted(n)}
    out["all"] = sum(hit.values()) / sum(n.values())
    return out


def shape_images(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """easy-VQA train images whose shape some question names, and that shape's index."""
    from PIL import Image

    _, answers, ids = easyvqa.questions("train")
    paths = easyvqa.image_paths("train")
    label = {i: SHAPES.index(ans) for ans, i in zip(answers, ids) if ans in SHAPES}
    keys = sorted(label)
    imgs = np.stack([_resize(Image.open(paths[k]), image_size) for k in keys])
    return to_pixel_values(torch.from_numpy(imgs).permute(0, 3, 1, 2)), torch.tensor([label[k] for k in keys])


def shape_probe(stem: str, steps: int, lr: float, x: torch.Tensor, y: torch.Tensor, prog, task) -> list[dict]:
    torch.manual_seed(0)
    m = MeterModel(preset_config("small", stem=stem))
    head = torch.nn.Linear(m.config.hidden_size, len(SHAPES))
    params = [*m.patch_embed.parameters(), m.vision_cls, m.vision_pos, *m.vision_layers.parameters(),
              *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    n_train = int(0.85 * len(y))
    g = torch.Generator().manual_seed(0)

    def encode(images: torch.Tensor) -> torch.Tensor:
        return head(m.encode_vision(images)[:, 0])  # (B, 1 + P, D) -> (B, classes) from [CLS]

    curve = []
    for step in range(1, steps + 1):
        rows = torch.randint(0, n_train, (64,), generator=g)
        loss = F.cross_entropy(encode(x[rows]), y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        prog.advance(task)
        if step % 100 == 0:
            with torch.no_grad():
                acc = (encode(x[n_train:]).argmax(1) == y[n_train:]).float().mean().item()
            curve.append({"step": step, "val_accuracy": acc})
    return curve


def vqa_probe(steps: int, lr: float, prog, task) -> list[dict]:
    torch.manual_seed(0)
    m = new_model("small", "easyvqa", seed=0)
    data = load_dataset("easyvqa", tokenizer=m.tokenizer, labels=m.labels, image_size=m.config.image_size,
                        seed=0, splits=("train", "val"))
    opt = torch.optim.AdamW(m.backbone_parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    val_idx = torch.arange(min(2000, len(data.val)))
    curve = []
    for step in range(1, steps + 1):
        m.train()
        pv, ids, mask, y = data.train.batch(torch.randint(0, len(data.train), (64,), generator=g),
                                            trim_padding=True)
        loss = F.cross_entropy(m(pv, ids, mask, mode="off").logits, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        prog.advance(task)
        if step % 100 == 0:
            curve.append({"step": step, **per_kind_accuracy(m, data.val, val_idx)})
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=ROOT / "build/bench/easyvqa/backbone.pt")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    rec: dict = {"steps": args.steps, "lr": args.lr, "batch": 64}
    t0 = time.perf_counter()
    if args.ckpt.exists():
        model = load_checkpoint(args.ckpt)
        test = load_dataset("easyvqa", tokenizer=model.tokenizer, labels=model.labels,
                            image_size=model.config.image_size, splits=("test",)).test
        rec["checkpoint"] = {"path": rel_to_root(args.ckpt),
                             "stem": model.config.stem, "test_accuracy": per_kind_accuracy(model, test,
                                                                                            torch.arange(len(test)))}
    x, y = shape_images(preset_config("small").image_size)
    with Progress(console=console) as prog:
        rec["shape_probe"] = {}
        for stem in ("patch", "conv"):
            task = prog.add_task(f"shape probe ({stem} stem)", total=args.steps)
            rec["shape_probe"][stem] = shape_probe(stem, args.steps, args.lr, x, y, prog, task)
        task = prog.add_task("VQA probe (conv stem)", total=args.steps)
        rec["vqa_probe"] = vqa_probe(args.steps, args.lr, prog, task)
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    save_json(RESULTS / "backbone_probe.json", rec)
    write_markdown(rec, len(y))
    console.print((RESULTS / "backbone_probe.md").read_text())


def write_markdown(rec: dict, n_images: int) -> None:
    rows = ["# Why the easy-VQA backbone stalls", "",
            f"Reproduce: `python benchmarks/backbone_probe.py` (AdamW lr {rec['lr']}, batch {rec['batch']}, "
            f"{rec['steps']} steps per probe, seed 0; {rec['seconds']:.0f} s).", ""]
    if "checkpoint" in rec:
        c = rec["checkpoint"]
        acc = c["test_accuracy"]
        rows += [f"Trained backbone `{c['path']}` ({c['stem']} stem) on the easy-VQA test split, `off` mode:", "",
                 "| answer type | accuracy |", "|---|---|"]
        rows += [f"| {k} | {100 * v:.1f}% |" for k, v in acc.items()]
        rows.append("")
    rows += [f"Vision encoder alone, trained to name the shape ({n_images} images, 15% held out):", "",
             "| step | " + " | ".join(f"{s} stem" for s in rec["shape_probe"]) + " |",
             "|---|" + "---|" * len(rec["shape_probe"])]
    steps = [p["step"] for p in next(iter(rec["shape_probe"].values()))]
    for i, step in enumerate(steps):
        rows.append(f"| {step} | " + " | ".join(f"{100 * c[i]['val_accuracy']:.1f}%"
                                                for c in rec["shape_probe"].values()) + " |")
    kinds = [k for k in rec["vqa_probe"][0] if k != "step"]
    rows += ["", "Whole VQA model (conv stem) trained on easy-VQA questions, validation accuracy per answer type:", "",
             "| step | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    rows += [f"| {p['step']} | " + " | ".join(f"{100 * p[k]:.1f}%" for k in kinds) + " |" for p in rec["vqa_probe"]]
    (RESULTS / "backbone_probe.md").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
