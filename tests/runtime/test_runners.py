"""Runners: one interface over PyTorch and ONNX Runtime; clear errors for unknown or missing runtimes."""

import sys

import numpy as np
import pytest

from trimkit.contract import INPUT_NAMES
from trimkit.errors import BadInputError, MissingDependencyError
from trimkit.runtime import load_runner
from trimkit.runtime.onnxruntime import ort_feed

from ..conftest import make_inputs


def test_unknown_runtime_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="unknown runtime 'tvm'"):
        load_runner("tvm", tmp_path / "x.onnx")


def test_missing_onnxruntime_names_the_pip_package(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(MissingDependencyError, match="pip install onnxruntime"):
        load_runner("onnxruntime", exported["adaptive"])


def test_onnxruntime_runner_matches_the_torch_runner(exported):
    ort = load_runner("onnxruntime", exported["adaptive"], threads=1, precision="fp32")
    ref = load_runner("torch", exported["ckpt"], mode="prune")
    pv, ids, mask = make_inputs(ref.model, 3, 8, seed=5)
    feeds = ort_feed(pv, ids, mask)
    assert list(feeds) == list(INPUT_NAMES)
    logits, counts = ort.run(feeds)
    ref_logits, ref_counts = ref.run(feeds)
    assert logits.dtype == np.float32 and counts.dtype == np.int64 and counts.shape == ref_counts.shape
    assert np.array_equal(counts, ref_counts)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=1e-3)
    d = ort.describe()
    assert d["runtime"] == "onnxruntime" and d["threads"] == 1 and "CPUExecutionProvider" in d["providers"]
    assert ref.describe()["mode"] == "prune"
