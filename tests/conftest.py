"""Shared fixtures: tiny models (built offline from the easy-vqa package's questions) and inputs."""

from __future__ import annotations

import pytest
import torch

from trimkit.factory import new_model
from trimkit.models import MeterModel


def make_inputs(model: MeterModel, batch: int, text_len: int, *, seed: int = 0, ragged: bool = True):
    """Random pixels, random word ids with [CLS] first, and (if ragged) padded rows."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    pv = torch.randn(batch, c.num_channels, c.image_size, c.image_size, generator=g)
    ids = torch.randint(3, c.vocab_size, (batch, text_len), generator=g)
    ids[:, 0] = 2  # [CLS]
    mask = torch.ones(batch, text_len, dtype=torch.int64)
    if ragged and text_len > 2:
        lengths = torch.randint(2, text_len + 1, (batch,), generator=g)
        for i, n in enumerate(lengths.tolist()):
            mask[i, n:] = 0
            ids[i, n:] = 0
    return pv, ids, mask


def randomize_trimmers(model: MeterModel, *, seed: int = 0, std: float = 0.5) -> MeterModel:
    """Replace the stable init so that the trimmers prune a good share of tokens and heads."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trimmer_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.fixture
def tiny_model() -> MeterModel:
    return new_model("tiny", "easyvqa", seed=0)


@pytest.fixture
def pruning_model() -> MeterModel:
    return randomize_trimmers(new_model("tiny", "easyvqa", seed=1), seed=1)


@pytest.fixture(scope="session")
def jsonl_data(tmp_path_factory):
    """A small JSONL dataset (60 `shapes` scenes as PNG files, 180 questions)."""
    import json

    from PIL import Image

    from trimkit.data.shapes import generate

    root = tmp_path_factory.mktemp("jsonl")
    raw = generate(60, image_size=32, seed=5)
    for i, img in enumerate(raw["images"]):
        Image.fromarray(img).save(root / f"{i}.png")
    lines = [json.dumps({"image": f"{i}.png", "question": q, "answer": a})
             for i, q, a in zip(raw["image_index"], raw["questions"], raw["answers"])]
    path = root / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
