"""`trimkit show`: one image and question through the trimmed model, drawn so people can trust pruning.

The figure shows the input image and, for every trimmed layer, the image with the patches that
no longer take part shaded; a grid of the question's words per layer (kept / pruned); the answer
with its probability, the runner-up answers and the instance's FLOPs ratio.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BadInputError

__all__ = ["show", "explain"]


@torch.no_grad()
def explain(model, image: str | os.PathLike, question: str) -> dict[str, Any]:
    """Run one (image, question) in `prune` mode with details; masks over the original positions."""
    from ..data.dataset import _open_image, _resize, to_pixel_values
    from ..data.tokenizer import WordPieceTokenizer

    if model.tokenizer is None:
        raise BadInputError("the checkpoint has no tokenizer; cannot encode a question")
    if not question.strip():
        raise BadInputError("the question is empty")
    c = model.config
    raw = _open_image(Path(image), "trimkit show").convert("RGB")
    pix = to_pixel_values(torch.from_numpy(_resize(raw, c.image_size).copy()).permute(2, 0, 1)[None])
    ids, mask = model.tokenizer.encode([question])
    model.eval()
    out = model(pix, ids, mask, mode="prune", details=True)
    probs = torch.softmax(out.logits[0], -1)
    top = torch.topk(probs, min(3, probs.numel()))
    if isinstance(model.tokenizer, WordPieceTokenizer):  # the pieces the model reads ([SEP] kept on truncation)
        words = model.tokenizer.decode(ids[0].tolist())
    else:  # the question's own words (an unknown word is shown, not [UNK])
        words = ["[CLS]", *model.tokenizer.words(question)][: ids.shape[1]]
    g = c.image_size // c.patch_size
    first = model.trim.first_trimmed_layer
    layers = []
    for ti, (vis, txt) in enumerate(out.token_masks):
        layers.append({"depth": first + ti, "kind": "fusion" if c.is_fusion(first + ti) else "encoder",
                       "patches": vis[0, 1:].reshape(g, g).numpy() > 0, "words": txt[0].numpy() > 0,
                       "heads": [int(h[0].sum()) for h in out.head_masks[ti]]})
    return {"image": np.asarray(raw), "question": question, "words": words,
            "answer": model.labels[int(top.indices[0])], "probability": float(top.values[0]),
            "runner_up": [(model.labels[int(i)], float(p)) for p, i in zip(top.values[1:], top.indices[1:])],
            "flops_ratio": float(out.flops_ratio[0]), "num_heads": c.max_heads, "layers": layers}


def show(ckpt: str | os.PathLike, image: str | os.PathLike, question: str, out: str | os.PathLike, *,
         force: bool = False) -> dict[str, Any]:
    """Draw `explain(...)` into a PNG at `out` (atomic; refuses to overwrite without force)."""
    from ..checkpoint import load_checkpoint
    from ..fileio import check_writable
    from .plots import pyplot, save_figure

    out = check_writable(out, force=force)
    ex = explain(load_checkpoint(ckpt), image, question)
    plt = pyplot()
    layers = ex["layers"]
    cols = min(6, len(layers) + 1)
    img_rows = -(-(len(layers) + 1) // cols)
    fig = plt.figure(figsize=(2.3 * cols, 2.5 * img_rows + 0.35 * len(layers) + 1.6))
    grid = fig.add_gridspec(img_rows + 1, cols, height_ratios=[2.3] * img_rows + [0.3 * len(layers) + 0.6])
    h, w = ex["image"].shape[:2]
    for i in range(len(layers) + 1):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        ax.imshow(ex["image"])
        if i == 0:
            ax.set_title("input", fontsize=9)
        else:
            layer = layers[i - 1]
            pruned = ~layer["patches"]
            overlay = np.zeros((*pruned.shape, 4))
            overlay[pruned] = (0.1, 0.1, 0.1, 0.78)
            ax.imshow(overlay, extent=(0, w, h, 0), interpolation="nearest")
            kept = int(layer["patches"].sum())
            ax.set_title(f"layer {layer['depth']} ({layer['kind']})\n{kept}/{pruned.size} patches, "
                         f"heads {'/'.join(map(str, layer['heads']))}", fontsize=8)
        ax.axis("off")
    _word_grid(fig.add_subplot(grid[img_rows, :]), ex)
    runner = ", ".join(f"{a} {100 * p:.0f}%" for a, p in ex["runner_up"])
    fig.suptitle(f"Q: {ex['question']}\nA: {ex['answer']} ({100 * ex['probability']:.0f}%; then {runner})   "
                 f"FLOPs ratio {ex['flops_ratio']:.2f}", fontsize=10)
    save_figure(fig, out)
    return ex


def _word_grid(ax, ex: dict[str, Any]) -> None:
    """Rows = trimmed layers, columns = the question's words; green cells are kept."""
    layers = ex["layers"]
    if not layers:
        ax.text(0.5, 0.5, "no trimmed layers: nothing is pruned", ha="center", va="center")
        ax.axis("off")
        return
    n_words = len(ex["words"])
    keep = np.array([layer["words"][:n_words] for layer in layers], dtype=float)
    from matplotlib.colors import ListedColormap

    ax.imshow(keep, cmap=ListedColormap(["#e4e4e4", "#8fd18f"]), vmin=0, vmax=1, aspect="auto")
    for r in range(keep.shape[0]):
        for col, word in enumerate(ex["words"]):
            ax.text(col, r, word, ha="center", va="center", fontsize=8, color="black" if keep[r, col] else "#8a8a8a")
    ax.set_yticks(range(len(layers)), [f"layer {layer['depth']}" for layer in layers], fontsize=8)
    ax.set_xticks([])
    ax.set_title("question words entering each layer (green: kept, grey: pruned)", fontsize=9)
