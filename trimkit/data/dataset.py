"""Encoded VQA splits (images + tokenized questions + label ids) and the dataset registry.

A dataset spec is `easyvqa`, `shapes` or a path to a `.jsonl` file of
`{"image": path, "question": str, "answer": str}` lines (image paths relative to the file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import BadInputError
from .tokenizer import WordPieceTokenizer, WordTokenizer

__all__ = ["to_pixel_values", "VQASplit", "TaskData", "load_dataset", "task_vocabulary", "DATASETS", "SHAPES_MAX_OBJECTS"]

DATASETS = ("easyvqa", "shapes", "FILE.jsonl")
SHAPES_MAX_OBJECTS = 6
SHAPES_SIZES = {"train": 6000, "test": 1500}  # images; 3 questions each


def to_pixel_values(images: Tensor) -> Tensor:
    """uint8 images (..., 3, S, S) -> float pixel values in [-1, 1], the model's input."""
    return images.float().div_(127.5).sub_(1.0)


@dataclass
class VQASplit:
    """One split, encoded. Questions point at rows of `images` through `image_index`."""

    images: Tensor  # (I, 3, S, S) uint8
    image_index: Tensor  # (Q,) int64
    input_ids: Tensor  # (Q, L) int64, [CLS] first, padded with 0
    attention_mask: Tensor  # (Q, L) int64
    labels: Tensor  # (Q,) int64
    questions: list[str]
    extra: dict[str, Tensor] = field(default_factory=dict)  # e.g. n_objects (Q,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, idx: Tensor, *, trim_padding: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> pixel_values (B, 3, S, S) float in [-1, 1], input_ids, attention_mask, labels.

        `trim_padding` drops the text columns that are padding in every row (as a serving stack would)."""
        ids, mask = self.input_ids[idx], self.attention_mask[idx]
        if trim_padding:
            n = int(mask.sum(1).max())
            ids, mask = ids[:, :n], mask[:, :n]
        return to_pixel_values(self.images[self.image_index[idx]]), ids, mask, self.labels[idx]

    def subset(self, idx: Tensor) -> VQASplit:
        return VQASplit(self.images, self.image_index[idx], self.input_ids[idx], self.attention_mask[idx],
                        self.labels[idx], [self.questions[i] for i in idx.tolist()],
                        {k: v[idx] for k, v in self.extra.items()})


@dataclass
class TaskData:
    name: str
    train: VQASplit
    val: VQASplit
    test: VQASplit

    def split(self, name: str) -> VQASplit:
        if name not in ("train", "val", "test"):
            raise BadInputError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)


# ----------------------------------------------------------------------------- raw sources


def _resize(img: np.ndarray | Image.Image, size: int) -> np.ndarray:
    im = img if isinstance(img, Image.Image) else Image.fromarray(img)
    im = im.convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def _open_image(path: Path, where: str) -> Image.Image:
    if not path.exists():
        raise BadInputError(f"{where}: image {path} does not exist")
    try:
        im = Image.open(path)
        im.load()
    except Exception as e:
        raise BadInputError(f"{where}: image {path} is not readable ({type(e).__name__})") from None
    return im


def _raw_easyvqa(split: str) -> dict:
    from . import easyvqa

    q, a, ids = easyvqa.questions(split)
    paths = easyvqa.image_paths(split)
    order = sorted(set(ids))
    row = {img_id: r for r, img_id in enumerate(order)}
    return {"image_paths": [Path(paths[i]) for i in order], "image_index": [row[i] for i in ids],
            "questions": q, "answers": a, "extra": {}}


def _raw_shapes(split: str, image_size: int, seed: int) -> dict:
    from .shapes import generate

    return generate(SHAPES_SIZES[split], max_objects=SHAPES_MAX_OBJECTS, image_size=image_size,
                    seed=seed * 2 + (0 if split == "train" else 1))


def _check_image(path: Path, where: str) -> None:
    """The file is an image PIL can decode (header and structure; `verify` reads no pixel data)."""
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:
        raise BadInputError(f"{where}: image {path} is not readable ({type(e).__name__})") from None


def read_jsonl(path: str | Path) -> dict:
    """Parse a JSONL dataset; every problem names the file and line. Each distinct image is checked to be a
    readable image here, at load time, so a bad file is refused before any model is built or trained."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{p}: no such file")
    if p.is_dir():
        raise BadInputError(f"{p}: is a directory, not a JSONL file")
    images: dict[Path, int] = {}
    image_index, questions, answers, lines = [], [], [], []
    with open(p, "rb") as f:
        for n, raw_line in enumerate(f, 1):
            where = f"{p}:{n}"
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError:
                raise BadInputError(f"{where}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadInputError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise BadInputError(f"{where}: expected an object with image, question, answer")
            missing = [k for k in ("image", "question", "answer") if not isinstance(rec.get(k), str)]
            if missing:
                raise BadInputError(f"{where}: missing or non-string field(s): {', '.join(missing)}")
            if not any(ch.isalnum() for ch in rec["question"]):  # any script: a WordPiece model may read it
                raise BadInputError(f"{where}: empty question")
            if not rec["answer"].strip():
                raise BadInputError(f"{where}: empty answer")
            img = (p.parent / rec["image"]).resolve()
            if img not in images:
                if not img.is_file():
                    raise BadInputError(f"{where}: image {rec['image']} does not exist")
                _check_image(img, where)
            image_index.append(images.setdefault(img, len(images)))
            questions.append(rec["question"])
            answers.append(rec["answer"].strip())
            lines.append(n)
    if not questions:
        raise BadInputError(f"{p}: no records")
    return {"image_paths": list(images), "image_index": image_index, "questions": questions,
            "answers": answers, "lines": lines, "extra": {}}


def _is_jsonl(spec: str) -> bool:
    return spec.endswith(".jsonl")


def _check_spec(spec: str) -> None:
    if spec not in ("easyvqa", "shapes") and not _is_jsonl(spec):
        raise BadInputError(f"unknown dataset {spec!r}; choose easyvqa, shapes or a FILE.jsonl")


def task_vocabulary(spec: str, *, seed: int = 0) -> tuple[list[str], list[str]]:
    """(labels, training texts) of a dataset: what `trimkit init` needs to size a model."""
    _check_spec(spec)
    if spec == "easyvqa":
        from . import easyvqa

        return easyvqa.answers(), easyvqa.questions("train")[0]
    if spec == "shapes":
        from .shapes import labels

        raw = _raw_shapes("train", 32, seed)  # words only: image size is irrelevant here
        return labels(SHAPES_MAX_OBJECTS), raw["questions"]
    raw = read_jsonl(spec)
    return sorted(set(raw["answers"])), raw["questions"]


# ----------------------------------------------------------------------------- encoding


def encode_split(raw: dict, *, tokenizer: WordTokenizer | WordPieceTokenizer, labels: list[str], image_size: int,
                 source: str) -> VQASplit:
    label_id = {a: i for i, a in enumerate(labels)}
    unknown = sorted({a for a in raw["answers"] if a not in label_id})
    if unknown:
        shown = ", ".join(repr(a) for a in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        first = raw["answers"].index(unknown[0])
        where = f"{source}:{raw['lines'][first]}" if "lines" in raw else source  # JSONL: the first line at fault
        raise BadInputError(f"{where}: answers not among the model's labels: {shown}")
    if "images" in raw:
        imgs = np.stack([_resize(im, image_size) for im in raw["images"]])
    else:
        imgs = np.stack([_resize(_open_image(pth, source), image_size) for pth in raw["image_paths"]])
    ids, mask = tokenizer.encode(raw["questions"])
    return VQASplit(
        images=torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(),  # (I, 3, S, S)
        image_index=torch.tensor(raw["image_index"], dtype=torch.int64),
        input_ids=ids,
        attention_mask=mask,
        labels=torch.tensor([label_id[a] for a in raw["answers"]], dtype=torch.int64),
        questions=list(raw["questions"]),
        extra={k: torch.tensor(v) for k, v in raw["extra"].items() if v and isinstance(v[0], (int, float))},
    )


def _carve_val(split: VQASplit, fraction: float, seed: int) -> tuple[VQASplit, VQASplit]:
    """Hold out a seeded fraction of the *images* (all their questions) as validation."""
    n_img = int(split.images.shape[0])
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n_img, generator=g)
    n_val = max(1, int(round(n_img * fraction)))
    is_val = torch.zeros(n_img, dtype=torch.bool)
    is_val[perm[:n_val]] = True
    q_val = is_val[split.image_index]
    return split.subset(torch.nonzero(~q_val).squeeze(1)), split.subset(torch.nonzero(q_val).squeeze(1))


def load_dataset(spec: str, *, tokenizer: WordTokenizer | WordPieceTokenizer, labels: list[str], image_size: int, seed: int = 0,
                 val_fraction: float = 0.1, splits: tuple[str, ...] = ("train", "val", "test")) -> TaskData:
    """Load and encode a dataset for a model (its tokenizer, labels and image size).

    `val` is carved from `train` by image (seeded). For a JSONL file, `test` is the same held-out
    part as `val` (the file has no test split of its own).
    """
    _check_spec(spec)
    enc = dict(tokenizer=tokenizer, labels=labels, image_size=image_size)
    need_train = "train" in splits or "val" in splits
    if _is_jsonl(spec):
        full = encode_split(read_jsonl(spec), source=spec, **enc)
        train, val = _carve_val(full, val_fraction, seed)
        return TaskData(spec, train, val, val)
    loader = _raw_easyvqa if spec == "easyvqa" else (lambda s: _raw_shapes(s, image_size, seed))
    train = val = test = None
    if need_train:
        train, val = _carve_val(encode_split(loader("train"), source=f"{spec}/train", **enc), val_fraction, seed)
    if "test" in splits:
        test = encode_split(loader("test"), source=f"{spec}/test", **enc)
    return TaskData(spec, train, val, test)
