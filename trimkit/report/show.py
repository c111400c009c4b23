"""`trimkit show`: one image and question through the trimmed model, drawn so people can trust pruning.

The figure shows the input image and, for every trimmed layer, the image with the patches that
no longer take part shaded and the heads each attention module keeps; a grid of the question's words
per layer (kept / pruned); the answer with its probability, the runner-up answers and the instance's
FLOPs ratio. What the model could not read is said on the figure and in `notes`: words its vocabulary
lacks (read as the unknown token) and a question cut to the model's text length.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BadInputError
from .plots import check_figure_path

__all__ = ["show", "explain", "notes", "heads_legend", "check_figure_path"]

MODALITY = ("vision", "text")


@torch.no_grad()
def explain(model, image: str | os.PathLike, question: str) -> dict[str, Any]:
    """Run one (image, question) in `prune` mode with details; masks over the original positions."""
    from ..data.dataset import _open_image, _resize, to_pixel_values
    from ..data.tokenizer import UNK, WordPieceTokenizer

    if model.tokenizer is None:
        raise BadInputError("the checkpoint has no tokenizer; cannot encode a question")
    if not question.strip():
        raise BadInputError("the question is empty")
    c = model.config
    raw = _open_image(Path(image), "trimkit show").convert("RGB")
    pix = to_pixel_values(torch.from_numpy(_resize(raw, c.image_size).copy()).permute(2, 0, 1)[None])
    tok = model.tokenizer
    ids, mask = tok.encode([question])
    unk_id = getattr(tok, "unk_id", None)
    unk_id = tok.index[UNK] if unk_id is None else unk_id
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
        depth = first + ti
        modules = c.attention_modules(depth)
        layers.append({"depth": depth, "kind": "fusion" if c.is_fusion(depth) else "encoder",
                       "patches": vis[0, 1:].reshape(g, g).numpy() > 0, "words": txt[0].numpy() > 0,
                       "heads": [int(h[0].sum()) for h in out.head_masks[ti]],
                       "heads_of": [c.layer_spec(depth, m).num_heads for m, _ in modules],
                       "modules": [f"{MODALITY[m]} {kind}" for m, kind in modules]})
    return {"image": np.asarray(raw), "question": question, "words": words,
            "answer": model.labels[int(top.indices[0])], "probability": float(top.values[0]),
            "runner_up": [(model.labels[int(i)], float(p)) for p, i in zip(top.values[1:], top.indices[1:])],
            "flops_ratio": float(out.flops_ratio[0]), "num_heads": c.max_heads, "layers": layers,
            # what the model could not read: unknown words, and the tokens cut off at its text length
            "unknown_words": tok.unknown_words(question),
            "unknown_positions": [i for i, t in enumerate(ids[0].tolist()) if t == unk_id],
            "text_tokens": tok.text_length(question), "max_text_len": tok.max_len,
            "dropped": tok.dropped(question)}


def notes(ex: dict[str, Any]) -> list[str]:
    """One line each for what the model could not read of the question (none when it read all of it)."""
    out = []
    if ex["unknown_words"]:
        out.append("not in the model's vocabulary, read as unknown ([UNK]): " + ", ".join(ex["unknown_words"]))
    if ex["dropped"]:
        out.append(f"question truncated: {ex['text_tokens']} tokens, the model reads {ex['max_text_len']}; "
                   f"dropped: {' '.join(ex['dropped'])}")
    return out


def heads_legend(layers: list[dict[str, Any]]) -> str:
    """What "heads 3/4/4/4" in a layer's title counts, naming the attention modules in that order."""
    kinds: dict[str, list[str]] = {}
    for layer in layers:
        kinds.setdefault(layer["kind"], layer["modules"])
    return ("heads a/b/... (n): heads kept per attention module, of n heads each — "
            + "; ".join(f"{kind} layers: {' / '.join(mods)}" for kind, mods in kinds.items()))


def show(ckpt: str | os.PathLike, image: str | os.PathLike, question: str, out: str | os.PathLike, *,
         force: bool = False) -> dict[str, Any]:
    """Draw `explain(...)` into a figure at `out` (PNG, JPEG, PDF or SVG by its suffix; atomic; refuses to
    overwrite without force)."""
    from ..checkpoint import load_checkpoint
    from ..fileio import check_writable
    from .plots import pyplot, save_figure

    out = check_writable(check_figure_path(out), force=force)
    ex = explain(load_checkpoint(ckpt), image, question)
    plt = pyplot()
    layers = ex["layers"]
    cols = min(6, len(layers) + 1)
    img_rows = -(-(len(layers) + 1) // cols)
    warn = notes(ex)
    fig = plt.figure(figsize=(max(2.3 * cols, 7.5), 2.5 * img_rows + 0.35 * len(layers) + 2.1 + 0.3 * len(warn)))
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
            of = set(layer["heads_of"])
            total = str(of.pop()) if len(of) == 1 else "/".join(map(str, layer["heads_of"]))
            ax.set_title(f"layer {layer['depth']} ({layer['kind']})\n{kept}/{pruned.size} patches, "
                         f"heads {'/'.join(map(str, layer['heads']))} ({total})", fontsize=8)
        ax.axis("off")
    _word_grid(fig.add_subplot(grid[img_rows, :]), ex)
    runner = ", ".join(f"{a} {100 * p:.0f}%" for a, p in ex["runner_up"])
    fig.suptitle(f"Q: {ex['question']}\nA: {ex['answer']} ({100 * ex['probability']:.0f}%; then {runner})   "
                 f"FLOPs ratio {ex['flops_ratio']:.2f}", fontsize=10)
    footnotes = [(line, "#b00020") for line in warn]
    if layers:
        footnotes.append((heads_legend(layers), "#444444"))
    _footnotes(fig, footnotes)
    save_figure(fig, out, tight=False)
    return ex


def _footnotes(fig, lines: list[tuple[str, str]]) -> None:
    """(text, color) lines under the figure, wrapped to its width, with room made for them."""
    import textwrap

    rows = [(part, color) for text, color in lines for part in textwrap.wrap(text, int(fig.get_figwidth() * 14))]
    step, h = 0.15, fig.get_figheight()  # inches per 7-point line
    for i, (part, color) in enumerate(reversed(rows)):
        fig.text(0.01, (0.06 + step * i) / h, part, fontsize=7, color=color, ha="left", va="bottom")
    fig.tight_layout(rect=(0, (0.1 + step * len(rows)) / h, 1, 1))


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
    unknown = set(ex["unknown_positions"])
    for r in range(keep.shape[0]):
        for col, word in enumerate(ex["words"]):
            color = "#b00020" if col in unknown else "black" if keep[r, col] else "#8a8a8a"
            ax.text(col, r, word + ("?" if col in unknown and word != "[UNK]" else ""), ha="center", va="center",
                    fontsize=8, color=color)
    ax.set_yticks(range(len(layers)), [f"layer {layer['depth']}" for layer in layers], fontsize=8)
    ax.set_xticks([])
    title = "question words entering each layer (green: kept, grey: pruned"
    title += ", red: unknown to the model)" if unknown else ")"
    if ex["dropped"]:
        title += f"; cut at {ex['max_text_len']} tokens"
    ax.set_title(title, fontsize=9)
