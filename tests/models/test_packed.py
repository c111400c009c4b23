"""Packed vs padded token layouts of `prune` mode, and the executed-FLOPs accounting beside the decided one."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trimkit.contract import ATTENTION_RUNS, GATHER_MAX_KEEP, attention_runs
from trimkit.cost import executed_ratio
from trimkit.factory import new_model
from trimkit.models.layers import Packing

from ..conftest import alternating_rates, make_inputs, randomize_trimmers

VARIANTS = [(lay, heads) for lay in ("packed", "padded") for heads in ("gather", "mask", "auto")]


def run(model, inputs, mode="prune", layout="packed", head_impl="gather"):
    model.layout, model.head_impl = layout, head_impl
    with torch.no_grad():
        return model(*inputs, mode=mode, details=True)


def alone(inputs, i):
    pv, ids, mask = inputs
    n = int(mask[i].sum())
    return pv[i:i + 1], ids[i:i + 1, :n], mask[i:i + 1, :n]


_MODEL = randomize_trimmers(new_model("tiny", "easyvqa", seed=5), seed=5)
_MODEL.trim = dataclasses.replace(_MODEL.trim, head_batch_keep=alternating_rates(_MODEL))
# 65 image tokens at width 64: attention products are a large share of the work, so the packed vision stream
# runs its self-attention products in runs of samples (`Packing.split`)
_RUNS = randomize_trimmers(new_model("tiny", "easyvqa", seed=8, image_size=64), seed=8)
_RUNS.trim = dataclasses.replace(_RUNS.trim, head_batch_keep=alternating_rates(_RUNS))


def test_runs_follow_the_attention_products_share():
    assert attention_runs(65, 64) == ATTENTION_RUNS > 1 and attention_runs(17, 64) == 1  # _RUNS, _MODEL
    assert attention_runs(577, 768) == ATTENTION_RUNS and attention_runs(197, 768) == 1  # BLIP 384 px, METER 224 px


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 7), k=st.integers(1, 6), runs=st.integers(1, 3))
def test_split_reassembles_the_packed_rows(seed, batch, k, runs):
    """Each run's padded view reads only its own samples' rows (fillers repeat a live row of the same sample),
    runs go by ascending extent and are as wide as their widest sample, and `back` puts every packed row back
    (live slots anywhere: text padding need not be at the end)."""
    g = torch.Generator().manual_seed(seed)
    weight = (torch.rand(batch, k, generator=g) < 0.6).float()
    weight[:, 0] = 1.0
    pack = Packing.of(weight, runs)
    x = torch.randn(int(weight.sum()), 3, generator=g)  # (T, C) packed rows
    split, count = pack.split, weight.sum(dim=1).long()
    extent = (weight * torch.arange(1, k + 1)).amax(dim=1).long()  # one past the last live slot
    assert len(split.members) == runs and sorted(torch.cat(split.members).tolist()) == list(range(batch))
    widths = []
    for members, src, bias in zip(split.members, split.src, split.key_bias):
        assert src.shape == (members.numel(), bias.shape[-1]) and bias.shape[:3] == (members.numel(), 1, 1)
        assert torch.equal(pack.sample[src], members[:, None].expand_as(src))  # own sample's rows only
        assert torch.equal(torch.isfinite(bias[:, 0, 0]).sum(dim=1), count[members])  # live slots are the keys
        if members.numel():
            assert bias.shape[-1] == int(extent[members].max())  # a trimmed grid's extent is its count
            widths += extent[members].tolist()
        assert torch.equal(split.width[members], torch.full_like(members, bias.shape[-1]))
    assert widths == sorted(widths)
    rows = torch.cat([x[src].reshape(-1, 3) for src in split.src])
    assert torch.equal(rows.index_select(0, split.back), x)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 5), text_len=st.integers(2, 16),
       runs=st.sampled_from([False, True]))
def test_layouts_agree_with_mask_mode_and_batch_of_one(seed, batch, text_len, runs):
    """Every layout x head implementation gives mask mode's logits and keep counts, and each sample its
    batch-of-one result, on random batch compositions (also where the packed vision stream runs its
    self-attention products in runs)."""
    model = _RUNS if runs else _MODEL
    inputs = make_inputs(model, batch, text_len, seed=seed)
    ref = run(model, inputs, mode="mask")
    for layout, heads in VARIANTS:
        out = run(model, inputs, layout=layout, head_impl=heads)
        torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
        assert torch.equal(out.keep_counts, ref.keep_counts), (layout, heads)
        torch.testing.assert_close(out.layer_flops, ref.layer_flops)  # decided FLOPs do not depend on the layout
        for (mv, mt), (pv, pt) in zip(ref.token_masks, out.token_masks):
            assert torch.equal(mv, pv) and torch.equal(mt, pt)
    packed = run(model, inputs)
    for i in range(batch):
        one = run(model, alone(inputs, i))
        torch.testing.assert_close(packed.logits[i:i + 1], one.logits, atol=1e-5, rtol=1e-5)
        assert torch.equal(packed.keep_counts[i:i + 1], one.keep_counts)


def test_pruning_happens_and_keep_counts_differ():
    """The property test above is only worth something if samples keep different counts."""
    out = run(_MODEL, make_inputs(_MODEL, 6, 12, seed=1))
    assert out.keep_counts[:, -1, 0].unique().numel() > 1
    assert float(out.flops_ratio.max()) < 0.9


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_keep_everything_reproduces_full(layout):
    model = randomize_trimmers(new_model("tiny", "easyvqa", seed=6), seed=6)
    model.trim = dataclasses.replace(model.trim, token_threshold=-1e4, head_threshold=-1e4)
    inputs = make_inputs(model, 5, 11, seed=2)
    off, out = run(model, inputs, mode="off"), run(model, inputs, layout=layout)
    torch.testing.assert_close(out.logits, off.logits, atol=1e-5, rtol=0)
    real = inputs[2].sum(dim=1)  # text tokens kept: all real ones
    assert torch.equal(out.keep_counts[:, :, 1], real[:, None].expand_as(out.keep_counts[:, :, 1]))
    assert torch.allclose(out.flops_ratio, torch.ones(5))


def test_executed_flops_by_layout():
    """Batch of one: the packed, gathered-heads artifact executes exactly what was decided; masked heads run
    and count. In a batch: packed executes less than padded, and its token-wise work is each sample's own."""
    model = _MODEL
    inputs = make_inputs(model, 6, 12, seed=4, ragged=False)
    one = run(model, alone(inputs, 0))
    torch.testing.assert_close(one.executed_layer_flops, one.layer_flops)
    masked = run(model, alone(inputs, 0), head_impl="mask")
    assert float(masked.executed_flops_ratio) > float(masked.flops_ratio)  # masked heads are not saved work

    packed, padded = run(model, inputs), run(model, inputs, layout="padded", head_impl="gather")
    decided = float(packed.layer_flops.sum())
    assert decided < float(packed.executed_layer_flops.sum()) < float(padded.executed_layer_flops.sum())
    assert executed_ratio(packed) < executed_ratio(padded)
    # with every head kept, packed differs from the per-sample work only by the attention products' padding
    keep_heads = dataclasses.replace(model.trim, head_threshold=-1e4)
    model.trim, saved = keep_heads, model.trim
    try:
        packed = run(model, inputs)
        alone_sum = sum(float(run(model, alone(inputs, i)).executed_layer_flops.sum()) for i in range(6))
    finally:
        model.trim = saved
    executed = float(packed.executed_layer_flops.sum())
    assert alone_sum <= executed <= 1.1 * alone_sum


def test_runs_cut_the_attention_products_padding(monkeypatch):
    """Runs of samples sorted by keep count: the batch executes less than with one padded view for the batch,
    and still at least each sample's own work; the logits do not change."""
    import trimkit.models.meter as meter

    model = _RUNS
    inputs = make_inputs(model, 6, 12, seed=4, ragged=False)
    split = run(model, inputs)
    assert split.keep_counts[:, -1, 0].unique().numel() > 1
    alone_sum = sum(float(run(model, alone(inputs, i)).executed_layer_flops.sum()) for i in range(6))
    monkeypatch.setattr(meter, "stream_attention_runs", lambda config: [1, 1])
    one_view = run(model, inputs)
    torch.testing.assert_close(split.logits, one_view.logits, atol=1e-5, rtol=1e-5)
    assert alone_sum <= float(split.executed_layer_flops.sum()) < float(one_view.executed_layer_flops.sum())


def test_auto_heads_gather_where_the_batch_keeps_few():
    """`auto` gathers exactly the modules whose measured batch keep rate is at most GATHER_MAX_KEEP, masks the
    rest, and masks everywhere when no rates were measured; executed work lies between the two uniform choices."""
    model = _MODEL
    model.head_impl = "auto"
    plan = model.heads_gathered()
    assert plan == [[r <= GATHER_MAX_KEEP for r in layer] for layer in model.trim.head_batch_keep]
    assert any(map(any, plan)) and not all(map(all, plan))
    inputs = alone(make_inputs(model, 4, 12, seed=4, ragged=False), 0)
    executed = {h: float(run(model, inputs, head_impl=h).executed_layer_flops.sum()) for h in ("gather", "auto", "mask")}
    assert executed["gather"] < executed["auto"] < executed["mask"]
    model.trim, saved = dataclasses.replace(model.trim, head_batch_keep=None), model.trim
    try:
        assert not any(map(any, model.heads_gathered()))
    finally:
        model.trim = saved
    model.head_impl = "shuffle"
    with pytest.raises(ValueError, match="unknown head pruning"):
        run(model, inputs, head_impl="shuffle")
