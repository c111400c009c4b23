"""Shared fixtures: tiny models (built offline from the easy-vqa package's questions) and inputs."""

from __future__ import annotations

import pytest
import torch

from trimkit.export.inputs import sample_inputs
from trimkit.factory import new_model
from trimkit.models import MeterModel


def make_inputs(model: MeterModel, batch: int, text_len: int, *, seed: int = 0, ragged: bool = True):
    """Random pixels, random word ids with [CLS] first, and (if ragged) padded rows."""
    return sample_inputs(model.config, batch, text_len, seed=seed, ragged=ragged)


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


def _gpu_ready() -> str | None:
    """None when TensorRT, an NVIDIA GPU and a CUDA build of torch are usable, else the reason to skip."""
    from trimkit.errors import MissingDependencyError
    from trimkit.export.trt import check_trt_ready

    try:
        check_trt_ready()
    except MissingDependencyError as e:
        return f"needs TensorRT and an NVIDIA GPU: {e}"
    if not torch.cuda.is_available():
        return f"needs a CUDA build of torch (this is {torch.__version__}): make setup-gpu"
    return None


def pytest_collection_modifyitems(config, items):
    gpu_items = [i for i in items if "gpu" in i.keywords]
    if not gpu_items:
        return
    reason = _gpu_ready()
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """A tiny pruning checkpoint and its adaptive, full and static ONNX exports (made once)."""
    import dataclasses

    from trimkit import save_checkpoint
    from trimkit.export.onnx import to_onnx

    root = tmp_path_factory.mktemp("export")
    model = randomize_trimmers(new_model("tiny", "easyvqa", seed=4), seed=4)
    n = len(model.token_trimmers)
    model.trim = dataclasses.replace(model.trim, static_keep_ratios=[[0.6, 0.8], [0.4, 0.7]][:n],
                                     static_head_keep=[[3, 2], [2, 3, 1, 4]][:n])
    ckpt = root / "model.pt"
    save_checkpoint(model, ckpt)
    paths = {"ckpt": ckpt}
    for mode in ("adaptive", "full", "static"):
        res = to_onnx(ckpt, root / f"{mode}.onnx", mode=mode)
        assert res.check["passed"]
        paths[mode] = res.path
    return paths
