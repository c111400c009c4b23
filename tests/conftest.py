"""Shared fixtures: tiny models (built offline from the easy-vqa package's questions) and inputs."""

from __future__ import annotations

import os

import pytest
import torch

from trimkit.export.inputs import sample_inputs
from trimkit.factory import new_model
from trimkit.models import MeterModel

# pytest-xdist workers share the cores: each takes its part, so that they do not oversubscribe the machine
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    torch.set_num_threads(_THREADS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)  # the CLI runs some tests start: same threads, same floats


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


def alternating_rates(model: MeterModel) -> list[list[float]]:
    """Head keep rates that make `--heads auto` gather every other attention module (and mask the rest)."""
    n = [len(layer) for layer in model.heads_gathered()]
    return [[(0.5, 1.0)[(i + j) % 2] for j in range(k)] for i, k in enumerate(n)]


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


class _ExportMemo:
    """`torch.onnx.export` of a given model in a given mode is deterministic and takes 8-16 s even for the tiny
    preset; many tests export the same model the same way (verify's full export above all). The memo keys the
    graph on everything the trace reads: the weights' bytes, the config, the trim settings, the layout, the head
    implementation, the mode, the opset and the precision; every export still runs its checks (onnx.checker,
    ONNX Runtime against PyTorch) on the graph it returns. The graphs live in the session's temporary folder,
    shared by pytest-xdist workers. `TRIMKIT_TEST_EXPORT_MEMO=0` turns it off."""

    def __init__(self, export_proto, folder):
        self.export_proto = export_proto
        self.folder = folder
        self.traced = self.hits = 0

    @staticmethod
    def key(model, mode: str, opset: int, precision: str) -> str:
        import hashlib
        import json

        h = hashlib.sha256(json.dumps([mode, opset, precision, str(model.layout), str(model.head_impl),
                                       model.config.to_dict(), model.trim.to_dict(),
                                       _tokenizer_state(model)], sort_keys=True,
                                      default=str).encode())
        for name, t in model.state_dict().items():
            h.update(name.encode())
            h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def __call__(self, model, mode, opset, precision):
        import fcntl

        import onnx

        path = self.folder / f"{self.key(model, mode, opset, precision)}.onnx.pb"
        # one tracer per graph: a worker that needs a graph another one is tracing waits for it (the wait is never
        # longer than tracing it again, and the machine's other core stays free for the other worker)
        with open(path.with_name(path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.exists():
                self.hits += 1
                return onnx.load_from_string(path.read_bytes())
            proto = self.export_proto(model, mode, opset, precision)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(proto.SerializeToString())
            os.replace(tmp, path)
            self.traced += 1
            return proto


@pytest.fixture(scope="session", autouse=True)
def export_memo(tmp_path_factory):
    import trimkit.export.onnx as onnx_export

    if os.environ.get("TRIMKIT_TEST_EXPORT_MEMO", "1") == "0":
        yield None
        return
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "export-memo"
    folder.mkdir(exist_ok=True)
    memo = _ExportMemo(onnx_export._export_proto, folder)
    onnx_export._export_proto = memo
    try:
        yield memo
    finally:
        onnx_export._export_proto = memo.export_proto


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (`--dist loadgroup`)
def pytest_collection_modifyitems(config, items):
    # the session fixture `exported` traces four graphs (~60 s): every test that uses it runs on one worker,
    # or each worker would trace them again
    for item in items:
        if "exported" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("exported"))
    gpu_items = [i for i in items if "gpu" in i.keywords]
    if not gpu_items:
        return
    reason = _gpu_ready()
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def pruning_ckpt(tmp_path_factory):
    """A tiny checkpoint whose random trimmers prune, with static keep ratios and head counts (the source of
    `exported`; tests that read only the checkpoint and trace none of `exported`'s graphs take it alone and stay
    out of the `exported` group; tests that trace one of them take `exported`, whose memo then serves it)."""
    import dataclasses

    from trimkit import save_checkpoint

    model = randomize_trimmers(new_model("tiny", "easyvqa", seed=4), seed=4)
    n = len(model.token_trimmers)
    model.trim = dataclasses.replace(model.trim, static_keep_ratios=[[0.6, 0.8], [0.4, 0.7]][:n],
                                     static_head_keep=[[3, 2], [2, 3, 1, 4]][:n])
    ckpt = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(model, ckpt)
    return ckpt


@pytest.fixture(scope="session")
def exported(pruning_ckpt, tmp_path_factory):
    """`pruning_ckpt` and its adaptive (packed and padded layouts), full and static ONNX exports (made once)."""
    from trimkit.export.onnx import to_onnx

    root = tmp_path_factory.mktemp("export")
    paths = {"ckpt": pruning_ckpt}
    for name, mode, layout in (("adaptive", "adaptive", "packed"), ("padded", "adaptive", "padded"),
                               ("full", "full", "packed"), ("static", "static", "packed")):
        res = to_onnx(pruning_ckpt, root / f"{name}.onnx", mode=mode, layout=layout)
        assert res.check["passed"]
        paths[name] = res.path
    return paths


def _tokenizer_state(model):
    """What the tokenizer stamps into the graph's metadata (and feeds the trace's example text)."""
    tok = getattr(model, "tokenizer", None)
    return tok.to_dict() if hasattr(tok, "to_dict") else type(tok).__name__
