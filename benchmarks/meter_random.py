"""A full-size METER checkpoint with random weights (issue 31), imported, for the paper-geometry speed benchmark.

No METER weights are available offline, so this writes a seeded random state dict in METER's key layout at the
published geometry -- CLIP ViT-B/16 (11 blocks, as METER builds it) at 288 px (18x18 + 1 = 325 image tokens),
RoBERTa-base (12 layers, 50,265 tokens, 514 positions), 6 co-attention layers per stream at width 768, the VQA
head over 3,129 answers -- as a Lightning-style `{"state_dict": ...}` file, then runs
`trimkit import METER.ckpt --tokenizer DIR --labels FILE` on it. Speed does not depend on the weights' values.

RoBERTa's vocabulary is not available offline either: the tokenizer is a byte-level BPE with RoBERTa's special
tokens, trained on easy-VQA's questions (needs the `tokenizers` package); the embedding table keeps RoBERTa's
50,265 rows (ids past the small vocabulary are unused placeholders). The answers are placeholders too.

    python benchmarks/meter_random.py --workdir build/bench/meter [--image-size 288] [--seed 0]

Other benchmarks call `imported_meter(workdir, image_size=288)`, which returns the trimkit checkpoint (built once).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from trimkit.pretrained.meter_ckpt import MeterLayout, meter_shapes

# METER-CLIP16-RoBERTa at its VQA fine-tuning geometry
FULL_SIZE = dict(vision="vit_model.visual.", vision_layers=11, vision_width=768, vision_mlp=3072, patch=16,
                 text_layers=12, text_width=768, text_mlp=3072, vocab=50265, text_positions=514, fusion_layers=6,
                 fusion_width=768, fusion_mlp=3072, token_types=2, task="vqa", answers=3129)


def random_meter_state(layout: MeterLayout, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor METER's VQA forward reads, seeded: weights N(0, 0.02), biases N(0, 0.02), LayerNorm weights
    1 + N(0, 0.1) (non-trivial normalizations), plus RoBERTa's pooler, which METER stores but never runs."""
    g = torch.Generator().manual_seed(seed)
    shapes = meter_shapes(layout) | {"text_transformer.pooler.dense.weight": (layout.text_width, layout.text_width),
                                     "text_transformer.pooler.dense.bias": (layout.text_width,)}
    state = {}
    for key, shape in shapes.items():
        t = torch.randn(shape, generator=g)
        is_norm = any(n in key for n in ("ln_", "LayerNorm", "vqa_classifier.1."))
        state[key] = (1.0 + 0.1 * t) if is_norm and key.endswith("weight") else 0.02 * t
    return state


def write_random_meter(path: Path, *, image_size: int = 288, seed: int = 0) -> Path:
    """The METER-layout checkpoint file (about 1.3 GB at full size)."""
    layout = MeterLayout(grid=image_size // FULL_SIZE["patch"], **FULL_SIZE)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": random_meter_state(layout, seed=seed), "epoch": 0, "global_step": 0}, tmp)
    tmp.replace(path)
    return path


def write_tokenizer(directory: Path) -> Path:
    """A byte-level BPE with RoBERTa's special tokens (ids 0-4), trained offline on easy-VQA's questions."""
    import tokenizers

    from trimkit.data.easyvqa import questions

    directory.mkdir(parents=True, exist_ok=True)
    tok = tokenizers.ByteLevelBPETokenizer()
    tok.train_from_iterator(questions("train")[0], vocab_size=2000, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.save_model(str(directory))
    return directory


def imported_meter(workdir: Path, *, image_size: int = 288, seed: int = 0, max_text_len: int = 40) -> Path:
    """The trimkit checkpoint of a full-size random METER (trimmers at stable init), built once per workdir."""
    from trimkit.checkpoint import save_checkpoint
    from trimkit.pretrained.meter_ckpt import import_meter_checkpoint

    out = workdir / f"meter{image_size}.pt"
    if out.exists():
        return out
    source = workdir / f"meter_random_{image_size}.ckpt"
    if not source.exists():
        write_random_meter(source, image_size=image_size, seed=seed)
    tok = workdir / "bpe"
    if not (tok / "merges.txt").exists():
        write_tokenizer(tok)
    labels = workdir / "answers.txt"
    labels.write_text("\n".join(f"answer-{i}" for i in range(FULL_SIZE["answers"])) + "\n")
    model = import_meter_checkpoint(source, tokenizer=tok, labels=labels, image_size=image_size,
                                    max_text_len=max_text_len, seed=seed)
    save_checkpoint(model, out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("build/bench/meter"))
    p.add_argument("--image-size", type=int, default=288)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t0 = time.perf_counter()
    ckpt = imported_meter(args.workdir, image_size=args.image_size, seed=args.seed)
    seconds = time.perf_counter() - t0
    import trimkit

    model = trimkit.load_checkpoint(ckpt)
    c = model.config
    print(json.dumps({
        "checkpoint": str(ckpt), "seconds": round(seconds, 1), "image_tokens": c.num_patches + 1,
        "vision_layers": c.encoder(0).layers, "text_layers": c.encoder(1).layers, "fusion_layers": c.fusion_layers,
        "width": c.hidden_size, "heads": c.num_heads, "labels": c.num_labels,
        "parameters": sum(p.numel() for p in model.parameters())}, indent=2))


if __name__ == "__main__":
    main()
