import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

import trimkit
from trimkit.checkpoint import FORMAT_VERSION, checkpoint_dict, read_checkpoint
from trimkit.errors import BadInputError

from .conftest import make_inputs


def test_round_trip_is_bit_exact(pruning_model, tmp_path):
    path = tmp_path / "m.pt"
    trimkit.save_checkpoint(pruning_model, path)
    loaded = trimkit.load_checkpoint(path)
    assert not loaded.training
    sd_a, sd_b = pruning_model.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert loaded.labels == pruning_model.labels
    assert loaded.tokenizer.vocab == pruning_model.tokenizer.vocab
    assert loaded.config == pruning_model.config and loaded.trim == pruning_model.trim
    assert loaded.config.vocab_size == len(loaded.tokenizer) and loaded.config.num_labels == 13
    inputs = make_inputs(pruning_model, 3, 8)
    with torch.no_grad():
        a, b = pruning_model.eval()(*inputs), loaded(*inputs)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.keep_counts, b.keep_counts)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "trimkit-checkpoint" and raw["format_version"] == FORMAT_VERSION
    assert raw["trimkit_version"] == trimkit.__version__


def test_fp16_storage_loads_the_rounded_model_exactly(pruning_model, tmp_path):
    """fp16 storage halves the file; loading gives float32 parameters equal to the fp16-rounded weights, so a
    second fp16 save of the loaded model is byte-for-byte the same weights (nothing drifts on re-export)."""
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    trimkit.save_checkpoint(pruning_model, full)
    trimkit.save_checkpoint(pruning_model, half, storage="fp16")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = trimkit.load_checkpoint(half)
    for k, v in pruning_model.state_dict().items():
        got = loaded.state_dict()[k]
        assert got.dtype == v.dtype
        expect = v.half().float() if v.is_floating_point() else v
        assert torch.equal(got, expect), k
    raw = torch.load(half, weights_only=True)
    assert raw["storage"] == "fp16"
    assert all(t.dtype == torch.float16 for t in raw["state_dict"].values() if t.is_floating_point())
    with pytest.raises(ValueError, match="unknown storage"):
        checkpoint_dict(pruning_model, storage="int4")


def test_refuses_overwrite_without_force(tiny_model, tmp_path):
    path = tmp_path / "m.pt"
    trimkit.save_checkpoint(tiny_model, path)
    before = path.read_bytes()
    with pytest.raises(BadInputError, match="already exists"):
        trimkit.save_checkpoint(tiny_model, path)
    assert path.read_bytes() == before
    trimkit.save_checkpoint(tiny_model, path, force=True)


class _Boom(Exception):
    pass


def test_failed_write_leaves_nothing(tiny_model, tmp_path, monkeypatch):
    path = tmp_path / "m.pt"

    def exploding_save(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise _Boom

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(_Boom):
        trimkit.save_checkpoint(tiny_model, path)
    assert list(tmp_path.iterdir()) == []


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "PWNED"
    payload = _Payload()
    payload.marker = marker
    path = tmp_path / "evil.pt"
    torch.save({"format": "trimkit-checkpoint", "x": payload}, path)
    with pytest.raises(BadInputError, match="never unpickles code"):
        trimkit.load_checkpoint(path)
    assert not marker.exists()
    # a raw pickle (not a torch zip) carrying code: also refused
    for protocol in (2, 4, 5):  # protocol 4+ frames its opcodes: the scan must still see the global
        raw = tmp_path / f"evil{protocol}.pkl"
        raw.write_bytes(pickle.dumps(payload, protocol=protocol))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's protocol warning must not leak either
            with pytest.raises(BadInputError, match="never unpickles code"):
                trimkit.load_checkpoint(raw)
        assert not marker.exists()


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.95])
def test_truncated_file(tiny_model, tmp_path, cut):
    path = tmp_path / "m.pt"
    trimkit.save_checkpoint(tiny_model, path)
    data = path.read_bytes()
    bad = tmp_path / "cut.pt"
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(BadInputError, match=str(bad)):
        trimkit.load_checkpoint(bad)


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"\x89PNG\r\n\x1a\n" + bytes(100)])
def test_foreign_files(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match="not a trimkit checkpoint"):
        trimkit.load_checkpoint(path)


def test_other_torch_file_and_versions(tiny_model, tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(tiny_model.state_dict(), path)
    with pytest.raises(BadInputError, match="not a trimkit checkpoint"):
        trimkit.load_checkpoint(path)
    ckpt = checkpoint_dict(tiny_model)
    ckpt["format_version"] = FORMAT_VERSION + 1
    torch.save(ckpt, tmp_path / "new.pt")
    with pytest.raises(BadInputError, match="newer trimkit"):
        read_checkpoint(tmp_path / "new.pt")


def test_labels_and_weights_must_match(tiny_model, tmp_path):
    ckpt = checkpoint_dict(tiny_model)
    ckpt["labels"] = ckpt["labels"][:-1]
    torch.save(ckpt, tmp_path / "labels.pt")
    with pytest.raises(BadInputError, match="labels do not match"):
        trimkit.load_checkpoint(tmp_path / "labels.pt")
    ckpt = checkpoint_dict(tiny_model)
    del ckpt["state_dict"]["classifier.0.weight"]
    torch.save(ckpt, tmp_path / "weights.pt")
    with pytest.raises(BadInputError, match="weights do not match"):
        trimkit.load_checkpoint(tmp_path / "weights.pt")


def test_train_state_round_trips(tiny_model, tmp_path):
    state = {"step": 7, "rng": torch.get_rng_state(), "optimizer": {"lr": 1e-3}}
    trimkit.save_checkpoint(tiny_model, tmp_path / "m.pt", train_state=state)
    raw = read_checkpoint(tmp_path / "m.pt")
    assert raw["train_state"]["step"] == 7 and torch.equal(raw["train_state"]["rng"], state["rng"])
