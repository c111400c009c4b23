"""OpenVINO runner vs PyTorch on the exported graphs: random batch compositions, batch invariance, shapes."""

import numpy as np
import pytest
import torch

import trimkit
from trimkit.errors import BadInputError
from trimkit.export.inputs import sample_inputs

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino; it is in the dev extra)")

from trimkit.runtime.openvino import OpenVinoRunner, load  # noqa: E402


@pytest.fixture(scope="module")
def model(exported):
    return trimkit.load_checkpoint(exported["ckpt"])


@pytest.fixture(scope="module")
def adaptive(exported):
    return load(exported["adaptive"], threads=2)


def _torch(model, pv, ids, mask, mode="prune"):
    with torch.no_grad():
        out = model(torch.from_numpy(pv), torch.from_numpy(ids), torch.from_numpy(mask), mode=mode)
    return out.logits.numpy(), out.keep_counts.numpy()


def test_runner_reports_fp32_inference_and_threads(adaptive):
    d = adaptive.describe()
    assert d["runtime"] == "openvino" and d["precision"] == "fp32" and d["threads"] == 2 and d["device"] == "CPU"
    assert d["version"].startswith("20")


@pytest.mark.parametrize("batch,text_len", [(1, 2), (1, 16), (3, 5), (8, 9), (13, 16)])
def test_matches_pytorch_at_batch_sizes_and_text_lengths(model, adaptive, batch, text_len):
    pv, ids, mask = (t.numpy() for t in sample_inputs(model.config, batch, text_len, seed=batch * 31 + text_len))
    logits, counts = adaptive.run({"pixel_values": pv, "input_ids": ids, "attention_mask": mask})
    ref_logits, ref_counts = _torch(model, pv, ids, mask)
    assert logits.dtype == np.float32 and counts.dtype == np.int64
    assert counts.shape == (batch, len(model.token_trimmers), 2)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=1e-3)


def test_random_batch_compositions_equal_batch_of_one(model, adaptive):
    """Every sample's outputs in a mixed batch equal its batch-of-one outputs (the export's batch invariance)."""
    rng = np.random.default_rng(0)
    pool = [tuple(t.numpy() for t in sample_inputs(model.config, 1, 12, seed=100 + i)) for i in range(24)]
    singles = [adaptive(*s) for s in pool]
    pruned_somewhere = False
    for _ in range(10):
        idx = rng.choice(len(pool), size=int(rng.integers(2, 9)), replace=False)
        pv, ids, mask = (np.concatenate([pool[i][k] for i in idx]) for k in range(3))
        logits, counts = adaptive(pv, ids, mask)
        for row, i in enumerate(idx):
            np.testing.assert_array_equal(counts[row], singles[i][1][0])
            np.testing.assert_allclose(logits[row], singles[i][0][0], atol=1e-5, rtol=1e-4)
        ref_logits, ref_counts = _torch(model, pv, ids, mask)
        np.testing.assert_array_equal(counts, ref_counts)
        np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=1e-3)
        pruned_somewhere |= bool((counts[:, :, 0] < model.config.num_patches + 1).any())
    assert pruned_somewhere  # the trimmers really prune: the comparison covers data-dependent k


@pytest.mark.parametrize("mode,trim_mode", [("full", "off"), ("static", "static")])
def test_full_and_static_graphs_match_pytorch(model, exported, mode, trim_mode):
    import dataclasses
    import json

    import onnx

    meta = {p.key: p.value for p in onnx.load(str(exported[mode]), load_external_data=False).metadata_props}
    trim = json.loads(meta["trimkit_config"])["trim_config"]
    model.trim = dataclasses.replace(model.trim, static_keep_ratios=trim["static_keep_ratios"],
                                     static_head_keep=trim["static_head_keep"])
    runner = load(exported[mode])
    pv, ids, mask = (t.numpy() for t in sample_inputs(model.config, 4, 10, seed=7))
    logits, counts = runner(pv, ids, mask)
    ref_logits, ref_counts = _torch(model, pv, ids, mask, mode=trim_mode)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=1e-3)


def test_bf16_is_opt_in_and_reported(model, exported):
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(BadInputError, match="not the bf16 asked for"):
            load(exported["adaptive"], precision="bf16")
        return
    runner = load(exported["adaptive"], precision="bf16")
    assert runner.describe()["precision"] == "bf16"
    pv, ids, mask = (t.numpy() for t in sample_inputs(model.config, 4, 12, seed=3))
    logits, _ = runner(pv, ids, mask)
    ref, _ = _torch(model, pv, ids, mask)
    # bf16 keeps 8 mantissa bits: close to PyTorch, but not within the fp32 tolerance
    assert np.abs(logits - ref).max() < 0.5
    assert np.abs(logits - ref).max() > 1e-4


def test_bad_input_is_one_clear_error(exported, tmp_path):
    with pytest.raises(BadInputError, match="precision 'fp8'"):
        OpenVinoRunner(exported["adaptive"], precision="fp8")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(BadInputError, match="OpenVINO could not read the model"):
        OpenVinoRunner(bad)
