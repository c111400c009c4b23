"""`trimkit pretrain`: the two stages real VLMs bring before task fine-tuning, for models built on the spot.

VLMs start from pretrained image encoders and a fusion pretrained on image-text matching (METER and BLIP both
use ITM); a model built on the spot has neither, and a VQA loss alone teaches both slowly: on easy-VQA the
whole model stalls on naming shapes while the vision encoder alone learns them in a few hundred steps
(the backbone_probe benchmark), and with the vision encoder pre-trained it stalls again on yes/no
questions, answering them from the question's wording alone (the answer_breakdown benchmark).

- `--task tokens`: the image stem, embeddings and vision layers learn, with a linear head on every patch
  token, what lies under the token: background, or the colour x shape of the object covering most of it.
- `--task match` (image-text matching): the whole backbone (both encoders, the fusion, the pooling) learns,
  with a linear head on the pooled [CLS] states, whether a short text ("red", "circle", "red circle") names
  an object in the image; half the texts do, half name a colour, shape or pair that is absent.
The heads are dropped afterwards, the classifier and trimmers are not touched, and the checkpoint goes on to
`trimkit train --no-trim`.

Labels come from the data, never from the test split:
- `easyvqa`: the images of the training part of the train split (validation images, carved with the same
  seed as `trimkit train` carves them, are held out to measure the stage). Each image shows one object; its
  shape and colour come from that image's training questions: the answer when it is a shape or a colour
  name, a shape or colour the question names as given ("what is the blue shape?"), and yes/no questions read
  with their negation ("is there not a red shape?" no -> red). The object's pixels are those that differ
  from the image's background colour (the most common colour of its border).
- `shapes`: scenes from the generator stream [seed, 7], which no VQA split uses (they use the integer
  seeds 2*seed and 2*seed+1), with their pixel label maps and object counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import PRETRAIN_TASKS
from ..data.easyvqa import COLORS as EASYVQA_COLORS
from ..data.easyvqa import SHAPES as EASYVQA_SHAPES
from ..data.easyvqa import negated, question_words
from ..errors import BadInputError, Interrupted

__all__ = ["TokenTargets", "token_targets", "patch_labels", "pretrain", "check_pretrain_seed", "PRETRAIN_DATA",
           "PRETRAIN_META"]

PRETRAIN_DATA = ("easyvqa", "shapes")
PRETRAIN_META = {"tokens": "vision_pretrain", "match": "match_pretrain"}  # the checkpoint meta key of each
DEFAULT_LR = {"tokens": 1e-3, "match": 5e-4}
SHAPES_PRETRAIN_STREAM = 7  # scenes from generator seed [seed, 7]: a stream no split's integer seed reaches
FOREGROUND_MIN_DIFF = 40  # max |channel difference| to the background colour above which a pixel is the object's


@dataclass
class TokenTargets:
    """Images and per-patch-token labels (0 = background, 1.. = colour x shape) for pre-training."""

    train_images: Tensor  # (N, 3, S, S) uint8
    train_labels: Tensor  # (N, P) int64
    held_images: Tensor
    held_labels: Tensor
    classes: int
    source: dict[str, Any]
    train_rows: Tensor  # the images' rows in their source (easyvqa: the train split's image table)
    held_rows: Tensor
    train_objects: Tensor  # (N, colours, shapes) int64: how many objects of each colour x shape
    held_objects: Tensor
    colours: tuple[str, ...]
    shapes: tuple[str, ...]


def patch_labels(maps: Tensor, patch: int, classes: int, min_cover: float = 0.25) -> Tensor:
    """(I, S, S) pixel labels -> (I, P) patch labels in the model's token order (row-major): the object label
    covering most of the patch if objects cover >= min_cover of it, else 0 (background)."""
    n, size = maps.shape[0], maps.shape[1]
    grid = size // patch
    pix = maps.view(n, grid, patch, grid, patch).permute(0, 1, 3, 2, 4).reshape(n * grid * grid, patch * patch)
    counts = torch.zeros(pix.shape[0], classes, dtype=torch.int64).scatter_add_(1, pix, torch.ones_like(pix))
    objects = counts[:, 1:]
    label = objects.argmax(1) + 1
    label[objects.sum(1) < min_cover * patch * patch] = 0
    return label.view(n, grid * grid)


def foreground(images: Tensor, min_diff: int = FOREGROUND_MIN_DIFF) -> Tensor:
    """(I, 3, S, S) uint8 -> (I, S, S) bool: pixels that differ from the image's background colour, taken as
    the most common colour of its one-pixel border."""
    x = images.to(torch.int64)
    border = torch.cat([x[:, :, 0, :], x[:, :, -1, :], x[:, :, :, 0], x[:, :, :, -1]], dim=2)  # (I, 3, 4S)
    codes = (border[:, 0] << 16) | (border[:, 1] << 8) | border[:, 2]  # (I, 4S)
    bg = torch.mode(codes, dim=1).values
    bg_rgb = torch.stack([(bg >> 16) & 255, (bg >> 8) & 255, bg & 255], dim=1)[:, :, None, None]
    return (x - bg_rgb).abs().amax(dim=1) > min_diff


def _easyvqa_object_labels(split, answer_names: list[str]) -> tuple[Tensor, Tensor]:
    """Per image of a VQASplit: (shape index, colour index), -1 where its training questions do not tell.

    A shape or colour is present when it is the answer ("what color is the shape?" -> blue), when the question
    names it as given ("what is the blue shape?"), or when a yes/no question about it says so ("is there a
    red shape?" yes; "is there not a red shape?" no). Absent ones ("... circle?" no) tell nothing here."""
    n = int(split.images.shape[0])
    found = [torch.full((n,), -1, dtype=torch.int64), torch.full((n,), -1, dtype=torch.int64)]
    index = [{name: i for i, name in enumerate(EASYVQA_SHAPES)}, {name: i for i, name in enumerate(EASYVQA_COLORS)}]

    def present(img: int, word: str) -> None:
        for kind, of in enumerate(index):
            if word in of:
                found[kind][img] = of[word]

    for img, label, question in zip(split.image_index.tolist(), split.labels.tolist(), split.questions):
        answer = answer_names[label]
        if answer not in ("yes", "no"):
            present(img, answer)
        elif (answer == "yes") == negated(question):
            continue  # says the attribute is absent: tells nothing here
        for w in question_words(question):
            present(img, w)
    return found[0], found[1]


def _easyvqa_targets(model, seed: int) -> TokenTargets:
    from ..data import load_dataset

    missing = [n for n in (*EASYVQA_SHAPES, *EASYVQA_COLORS, "yes", "no") if n not in model.labels]
    if missing:
        raise BadInputError(f"the checkpoint's answers are not easy-VQA's (it lacks {', '.join(missing[:4])}); "
                            "pre-train it on the data it was built for")
    data = load_dataset("easyvqa", tokenizer=model.tokenizer, labels=model.labels,
                        image_size=model.config.image_size, seed=seed, splits=("train",))
    classes = 1 + len(EASYVQA_SHAPES) * len(EASYVQA_COLORS)
    parts = []
    for split in (data.train, data.val):
        rows = torch.unique(split.image_index)  # the images this part's questions use
        shape, colour = _easyvqa_object_labels(split, model.labels)
        rows = rows[(shape[rows] >= 0) & (colour[rows] >= 0)]
        images = split.images[rows]
        obj = 1 + colour[rows] * len(EASYVQA_SHAPES) + shape[rows]
        maps = torch.where(foreground(images), obj[:, None, None], torch.zeros((), dtype=torch.int64))
        objects = torch.nn.functional.one_hot(obj - 1, classes - 1).view(-1, len(EASYVQA_COLORS), len(EASYVQA_SHAPES))
        parts.append((images, patch_labels(maps, model.config.patch_size, classes), rows, objects))
    (tr_x, tr_y, tr_rows, tr_obj), (va_x, va_y, va_rows, va_obj) = parts
    all_images = int(data.train.images.shape[0])
    source = {"data": "easyvqa", "images": "train split (training part); held out: its validation part",
              "train_images": int(tr_x.shape[0]), "held_out_images": int(va_x.shape[0]),
              "unlabelled_images": all_images - int(tr_x.shape[0]) - int(va_x.shape[0]),
              "foreground_min_diff": FOREGROUND_MIN_DIFF}
    return TokenTargets(tr_x, tr_y, va_x, va_y, classes, source, tr_rows, va_rows, tr_obj, va_obj,
                        EASYVQA_COLORS, EASYVQA_SHAPES)


def _shapes_targets(model, seed: int, images: int = 6000, held_out: int = 500) -> TokenTargets:
    from ..data.dataset import SHAPES_MAX_OBJECTS
    from ..data.shapes import COLORS, SHAPES, generate

    gen_seed = [seed, SHAPES_PRETRAIN_STREAM]
    raw = generate(images + held_out, max_objects=SHAPES_MAX_OBJECTS, image_size=model.config.image_size,
                   seed=gen_seed, questions_per_image=1, label_maps=True)
    x = torch.from_numpy(np.ascontiguousarray(raw["images"])).permute(0, 3, 1, 2).contiguous()
    classes = 1 + len(COLORS) * len(SHAPES)
    y = patch_labels(torch.from_numpy(raw["label_maps"]).long(), model.config.patch_size, classes)
    source = {"data": "shapes", "generator_seed": gen_seed, "train_images": images, "held_out_images": held_out}
    rows, objects = torch.arange(images + held_out), torch.from_numpy(raw["scenes"]).long()
    return TokenTargets(x[:images], y[:images], x[images:], y[images:], classes, source, rows[:images], rows[images:],
                        objects[:images], objects[images:], tuple(COLORS), tuple(SHAPES))


def _check_data(spec: str) -> None:
    if spec not in PRETRAIN_DATA:
        raise BadInputError(f"vision pre-training needs per-object labels, which {spec!r} does not have; "
                            f"choose {' or '.join(PRETRAIN_DATA)}")


def token_targets(spec: str, model, seed: int = 0) -> TokenTargets:
    """Pre-training images and token labels for dataset `spec` (easyvqa or shapes), sized for `model`."""
    _check_data(spec)
    if model.config.image_size % model.config.patch_size:
        raise BadInputError(f"image size {model.config.image_size} is not a multiple of the patch size "
                            f"{model.config.patch_size}")
    return (_easyvqa_targets if spec == "easyvqa" else _shapes_targets)(model, seed)


def _token_logits(model, head: torch.nn.Linear, pixel_values: Tensor) -> Tensor:
    """(B, P, classes): the head on every patch token of the vision encoder's output ([CLS] excluded)."""
    return head(model.encode_vision(pixel_values)[:, 1:])  # (B, 1 + P, D) -> (B, P, classes)


def check_pretrain_seed(meta: dict | None, data: str, seed: int, where: str) -> None:
    """`pretrain` and `train` carve easy-VQA's validation images by their --seed: a later stage with another seed
    would validate on (or pre-train on) the other's images. Refuse it, in one line."""
    for key in PRETRAIN_META.values():
        pre = (meta or {}).get(key) or {}
        if pre.get("data") == data == "easyvqa" and pre.get("seed") != seed:
            raise BadInputError(f"{where}: it was pre-trained (trimkit pretrain) with --seed {pre.get('seed')}; "
                                f"use the same seed (not {seed}) so that the validation images stay unseen")


class _TokensTask:
    """The vision encoder names each patch token's object (a linear head per token)."""

    def __init__(self, model, t: TokenTargets, seed: int) -> None:
        from ..config import VISION

        self.model, self.t = model, t
        self.head = torch.nn.Linear(model.config.hidden_size, t.classes)
        self.parameters = [*model.encoder_parameters(VISION), *self.head.parameters()]

    def loss(self, rows: Tensor) -> Tensor:
        from ..data.dataset import to_pixel_values

        scores = _token_logits(self.model, self.head, to_pixel_values(self.t.train_images[rows]))
        return torch.nn.functional.cross_entropy(scores.float().flatten(0, 1), self.t.train_labels[rows].flatten())

    @torch.no_grad()
    def evaluate(self, batch: int = 256) -> dict[str, float]:
        from ..data.dataset import to_pixel_values

        images, labels = self.t.held_images, self.t.held_labels
        pred = torch.cat([_token_logits(self.model, self.head, to_pixel_values(images[i:i + batch])).argmax(-1)
                          for i in range(0, images.shape[0], batch)])
        hit = pred == labels
        return {"token_accuracy": float(hit.float().mean()),
                "object_token_accuracy": float(hit[labels > 0].float().mean())}


def match_texts(objects: Tensor, colours: tuple[str, ...], shapes: tuple[str, ...],
                g: torch.Generator) -> tuple[list[str], Tensor]:
    """One text per image (objects: (B, colours, shapes) counts) and whether it names an object there (1) or
    not (0), half and half where the image allows: a colour ("red"), a shape ("circle") or both ("red
    circle"), each a third of the time."""
    texts, labels = [], []
    for obj in objects:
        kind = int(torch.randint(3, (1,), generator=g))
        want = bool(torch.rand(1, generator=g) < 0.5)
        present = (obj.sum(1) > 0, obj.sum(0) > 0, (obj > 0).flatten())[kind]
        pool = torch.nonzero(present == want).flatten()
        if pool.numel() == 0:  # e.g. every shape is in the scene: nothing absent to name
            want = not want
            pool = torch.nonzero(present == want).flatten()
        i = int(pool[torch.randint(pool.numel(), (1,), generator=g)])
        texts.append(colours[i] if kind == 0 else shapes[i] if kind == 1
                     else f"{colours[i // len(shapes)]} {shapes[i % len(shapes)]}")
        labels.append(int(want))
    return texts, torch.tensor(labels)


class _MatchTask:
    """Image-text matching: does the text name an object in the image (a linear head on the pooled states)?"""

    HELD_TEXTS = 4  # texts per held-out image

    def __init__(self, model, t: TokenTargets, seed: int) -> None:
        vocab = getattr(model.tokenizer, "index", None)  # word-level and WordPiece vocabularies alike
        unknown = [] if vocab is None else [w for w in (*t.colours, *t.shapes) if w not in vocab]
        if unknown:
            raise BadInputError(f"image-text matching needs the object words in the tokenizer; it lacks "
                                f"{', '.join(unknown[:4])}")
        self.model, self.t = model, t
        self.head = torch.nn.Linear(model.classifier[0].in_features, 2)  # reads what the classifier reads
        skip = {id(p) for p in model.classifier.parameters()}
        self.parameters = [*(p for p in model.backbone_parameters() if id(p) not in skip), *self.head.parameters()]
        self.g = torch.Generator().manual_seed(seed + 1)
        held = t.held_objects.repeat_interleave(self.HELD_TEXTS, dim=0)
        self.held_texts, self.held_labels = match_texts(held, t.colours, t.shapes,
                                                        torch.Generator().manual_seed(seed + 2))

    def _scores(self, images: Tensor, texts: list[str]) -> Tensor:
        from ..data.dataset import to_pixel_values

        ids, mask = self.model.tokenizer.encode(texts)
        out = self.model(to_pixel_values(images), ids, mask, mode="off", details=True)
        return self.head(out.pooled)

    def loss(self, rows: Tensor) -> Tensor:
        texts, labels = match_texts(self.t.train_objects[rows], self.t.colours, self.t.shapes, self.g)
        return torch.nn.functional.cross_entropy(self._scores(self.t.train_images[rows], texts).float(), labels)

    @torch.no_grad()
    def evaluate(self, batch: int = 256) -> dict[str, float]:
        images = self.t.held_images.repeat_interleave(self.HELD_TEXTS, dim=0)
        pred = torch.cat([self._scores(images[i:i + batch], self.held_texts[i:i + batch]).argmax(-1)
                          for i in range(0, images.shape[0], batch)])
        hit, pos = pred == self.held_labels, self.held_labels == 1
        return {"match_accuracy": float(hit.float().mean()), "named_accuracy": float(hit[pos].float().mean()),
                "absent_accuracy": float(hit[~pos].float().mean())}


def pretrain(ckpt: str | Path, out: str | Path, *, task: str, data: str, steps: int, seed: int = 0,
             batch_size: int = 64, lr: float | None = None, precision: str = "fp32", evals: int = 5,
             force: bool = False, console=None, show_progress: bool = True) -> dict[str, Any]:
    """Pre-train checkpoint `ckpt` on `task` (tokens or match, see the module doc) and save the model (head
    dropped) to `out`, the stage's record in its meta under PRETRAIN_META[task]. Returns the record."""
    from rich.progress import Progress

    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..config import autocast
    from ..fileio import check_writable
    from .loop import _lr_scale

    if task not in PRETRAIN_TASKS:
        raise BadInputError(f"unknown pre-training task {task!r}; choose {' or '.join(PRETRAIN_TASKS)}")
    lr = DEFAULT_LR[task] if lr is None else lr
    if steps < 1 or batch_size < 1:
        raise BadInputError(f"--steps and --batch-size must be at least 1 (got {steps}, {batch_size})")
    if not lr > 0:
        raise BadInputError(f"--lr must be positive, not {lr}")
    _check_data(data)
    check_writable(out, force=force)
    torch.manual_seed(seed)
    model = load_checkpoint(ckpt)
    check_pretrain_seed(model.meta, data, seed, str(ckpt))
    t = token_targets(data, model, seed)
    job = (_TokensTask if task == "tokens" else _MatchTask)(model, t, seed)
    opt = torch.optim.AdamW(job.parameters, lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    n = int(t.train_images.shape[0])
    curve, step = [], 0
    model.train()
    try:
        with Progress(console=console, disable=not show_progress) as bar:
            progress = bar.add_task(f"pre-training ({task})", total=steps)
            for step in range(steps):
                rows = torch.randint(0, n, (batch_size,), generator=g)
                for group in opt.param_groups:
                    group["lr"] = lr * _lr_scale(step, steps, 0.05)
                with autocast(precision):
                    loss = job.loss(rows)
                if not math.isfinite(loss.item()):
                    raise BadInputError(f"pre-training diverged at step {step + 1} (loss {loss.item()}); lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(progress, advance=1, description=f"pre-training ({task}, loss {loss.item():.3f})")
                if (step + 1) % max(1, steps // evals) == 0 or step + 1 == steps:
                    model.eval()
                    curve.append({"step": step + 1, "loss": loss.item(), **job.evaluate()})
                    model.train()
                    if console is not None:
                        console.print(f"step {step + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in curve[-1].items()
                                                                      if k != "step"))
    except KeyboardInterrupt:
        raise Interrupted(f"pre-training stopped before step {step + 1} of {steps}; nothing written") from None
    info = {"task": task, "data": data, "steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed,
            "precision": precision, "classes": t.classes, **t.source, "curve": curve}
    save_checkpoint(model.eval(), out, force=force, meta={**model.meta, PRETRAIN_META[task]: info})
    return info
