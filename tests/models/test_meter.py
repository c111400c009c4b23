"""The three trim modes on the same weights: off / mask / prune."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from trimkit.factory import new_model

from ..conftest import make_inputs, randomize_trimmers


def run(model, inputs, mode):
    with torch.no_grad():
        return model(*inputs, mode=mode, details=True)


@pytest.mark.parametrize("batch,text_len", [(1, 6), (4, 11)])
def test_keep_everything_reproduces_untrimmed(tiny_model, batch, text_len):
    inputs = make_inputs(tiny_model, batch, text_len, seed=batch)
    off, mask, prune = (run(tiny_model, inputs, m) for m in ("off", "mask", "prune"))
    torch.testing.assert_close(mask.logits, off.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(prune.logits, off.logits, atol=1e-5, rtol=0)
    for o in (off, mask, prune):
        assert torch.allclose(o.flops_ratio, torch.ones(batch))
    assert torch.equal(prune.keep_counts, off.keep_counts)
    real = inputs[2].sum(1)
    assert torch.equal(prune.keep_counts[:, :, 1], real[:, None].expand_as(prune.keep_counts[:, :, 1]))


def test_stable_init_keeps_all_tokens_and_heads(tiny_model):
    inputs = make_inputs(tiny_model, 3, 9)
    out = run(tiny_model, inputs, "mask")
    for vis, txt in out.token_masks:
        assert vis.min() == 1
        assert torch.equal(txt, inputs[2].float())
    for mods in out.head_masks:
        for h in mods:
            assert h.min() == 1
    # in training, too, the Gumbel draws at logit 5 keep nearly everything
    tiny_model.train()
    torch.manual_seed(0)
    out = tiny_model(*inputs, mode="mask", details=True)
    kept = torch.cat([v.flatten() for v, _ in out.token_masks])
    assert kept.mean() > 0.98


def assert_prune_equals_mask(model, inputs):
    mask, prune = run(model, inputs, "mask"), run(model, inputs, "prune")
    torch.testing.assert_close(prune.logits, mask.logits, atol=1e-4, rtol=0)
    assert torch.equal(prune.keep_counts, mask.keep_counts)
    for (mv, mt), (pv, pt) in zip(mask.token_masks, prune.token_masks):
        assert torch.equal(mv, pv) and torch.equal(mt, pt)  # same kept sets
    for mh, ph in zip(mask.head_masks, prune.head_masks):
        for a, b in zip(mh, ph):
            assert torch.equal(a, b)
    torch.testing.assert_close(prune.layer_flops, mask.layer_flops)
    return prune


def test_prune_equals_mask_batch_of_one(pruning_model):
    ratios = []
    for seed in range(5):
        out = assert_prune_equals_mask(pruning_model, make_inputs(pruning_model, 1, 10, seed=seed))
        ratios.append(out.flops_ratio.item())
    assert max(ratios) < 0.95  # real pruning happened


def test_prune_equals_mask_mixed_batch(pruning_model):
    out = assert_prune_equals_mask(pruning_model, make_inputs(pruning_model, 6, 13, seed=3))
    counts = out.keep_counts[:, -1, 0]
    assert counts.min() < counts.max()  # samples keep different numbers: filler slots are exercised


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(2, 6), text_len=st.integers(2, 16))
def test_batch_invariance(seed, batch, text_len):
    model = _MODEL
    inputs = make_inputs(model, batch, text_len, seed=seed)
    batched = run(model, inputs, "prune")
    for i in range(batch):
        n = int(inputs[2][i].sum())
        single = run(model, (inputs[0][i:i + 1], inputs[1][i:i + 1, :n], inputs[2][i:i + 1, :n]), "prune")
        torch.testing.assert_close(batched.logits[i:i + 1], single.logits, atol=1e-5, rtol=1e-5)
        assert torch.equal(batched.keep_counts[i:i + 1], single.keep_counts)


_MODEL = randomize_trimmers(new_model("tiny", "easyvqa", seed=2), seed=2)


def test_straight_through_gradients_reach_every_trimmer_parameter(pruning_model):
    model = pruning_model.train()
    torch.manual_seed(0)
    pv, ids, mask = make_inputs(model, 4, 10)
    out = model(pv, ids, mask, mode="mask")
    loss = F.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3])) + (out.flops_ratio.mean() - 0.5) ** 2
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if ("trimmers" in n) and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, f"no gradient: {missing}"


def test_stable_init_gradients_reach_last_trimmer_layers(tiny_model):
    model = tiny_model.train()
    torch.manual_seed(0)
    pv, ids, mask = make_inputs(model, 4, 10)
    out = model(pv, ids, mask, mode="mask")
    (F.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3])) + out.flops_ratio.mean()).backward()
    for tt in model.token_trimmers:
        for t in tt:
            assert t.fc2.bias.grad.abs().sum() > 0 and t.cls_proj.weight.grad.abs().sum() > 0
    for ht in model.head_trimmers:
        for h in ht:
            assert h.fc.bias.grad.abs().sum() > 0


def test_masks_are_cumulative_and_cls_kept(pruning_model):
    out = run(pruning_model, make_inputs(pruning_model, 5, 12, seed=7), "mask")
    for m in range(2):
        prev = None
        for layer in out.token_masks:
            cur = layer[m]
            assert cur[:, 0].min() == 1
            if prev is not None:
                assert (cur <= prev).all()
            prev = cur
    for mods in out.head_masks:
        for h in mods:
            assert h.sum(1).min() >= 1


def test_default_modes_and_prune_refuses_training(tiny_model):
    inputs = make_inputs(tiny_model, 2, 5)
    tiny_model.train()
    with pytest.raises(RuntimeError, match="inference"):
        tiny_model(*inputs, mode="prune")
    with pytest.raises(ValueError, match="unknown trim mode"):
        tiny_model(*inputs, mode="bogus")
    tiny_model.eval()
    out = tiny_model(*inputs)
    assert out.keep_counts.dtype == torch.int64
    assert out.keep_counts.shape == (2, tiny_model.config.num_layers - tiny_model.trim.first_trimmed_layer, 2)


@pytest.mark.parametrize("token,head", [(True, False), (False, True), (False, False)])
def test_partial_trimming_configs(token, head):
    from trimkit.config import TrimConfig

    model = randomize_trimmers(new_model("tiny", "easyvqa", trim=TrimConfig(token_trimming=token, head_trimming=head)))
    out = assert_prune_equals_mask(model, make_inputs(model, 3, 9, seed=1))
    if not token:
        full = make_inputs(model, 3, 9, seed=1)[2].sum(1)
        assert torch.equal(out.keep_counts[:, -1, 1], full)


def test_static_mode_keeps_shape_derived_counts(pruning_model):
    import dataclasses

    from trimkit.trimmers import static_count

    model = pruning_model
    n_trim = len(model.token_trimmers)
    everything = dataclasses.replace(model.trim, static_keep_ratios=[[1.0, 1.0]] * n_trim,
                                     static_head_keep=[[4] * len(m) for m in model.head_trimmers])
    inputs = make_inputs(model, 3, 10, ragged=False)
    model.trim = everything
    torch.testing.assert_close(run(model, inputs, "static").logits, run(model, inputs, "off").logits, atol=1e-5, rtol=0)
    model.trim = dataclasses.replace(everything, static_keep_ratios=[[0.5, 0.6], [0.3, 0.6]],
                                     static_head_keep=[[2, 1], [1, 2, 3, 4]])
    out = run(model, inputs, "static")
    nv, nt = model.config.num_patches + 1, 10
    assert out.keep_counts[:, 0].tolist() == [[static_count(nv, 0.5), static_count(nt, 0.6)]] * 3
    assert out.keep_counts[:, 1, 0].tolist() == [min(static_count(nv, 0.3), static_count(nv, 0.5))] * 3
    assert [int(h[0].sum()) for h in out.head_masks[1]] == [1, 2, 3, 4]
    assert static_count(17, 0.5) == 9 and static_count(10, 0.0001) == 2 and static_count(1, 0.5) == 1


def test_static_mode_requires_calibration(tiny_model):
    with pytest.raises(ValueError, match="calibrated"):
        run(tiny_model, make_inputs(tiny_model, 1, 4), "static")


def test_conv_stem_modes_agree():
    from trimkit.config import ModelConfig

    stable = new_model("tiny", "easyvqa", seed=2, stem="conv")
    assert stable.config.stem == "conv" and stable.patch_embed(torch.zeros(1, 3, 32, 32)).shape == (1, 64, 4, 4)
    inputs = make_inputs(stable, 3, 9, seed=2)
    torch.testing.assert_close(run(stable, inputs, "prune").logits, run(stable, inputs, "off").logits,
                               atol=1e-5, rtol=0)
    assert_prune_equals_mask(randomize_trimmers(stable, seed=2), inputs)
    with pytest.raises(ValueError, match="power-of-two"):
        ModelConfig(image_size=60, patch_size=6, stem="conv")
    with pytest.raises(ValueError, match="unknown stem"):
        ModelConfig(stem="resnet")


def test_pool_product():
    """The classifier also reads pooled_vision * pooled_text; trimming semantics are unchanged."""
    from trimkit.config import VISION, EncoderSpec, ModelConfig

    model = new_model("tiny", "easyvqa", seed=3, pool_product=True)
    d = model.config.final_width(VISION)
    assert model.classifier[0].in_features == 3 * d
    inputs = make_inputs(model, 3, 9, seed=3)
    out = model(*inputs, mode="off", details=True)
    pv, pt = out.pooled[:, :d], out.pooled[:, d: 2 * d]
    torch.testing.assert_close(out.pooled[:, 2 * d:], pv * pt)
    torch.testing.assert_close(run(model, inputs, "prune").logits, out.logits, atol=1e-5, rtol=0)
    assert_prune_equals_mask(randomize_trimmers(model, seed=3), inputs)
    with pytest.raises(ValueError, match="pool_product needs final states of equal widths"):
        ModelConfig(fusion_style="text", fusion_layers=1, hidden_size=64, num_heads=4, pool_product=True,
                    vision_encoder=EncoderSpec(layers=1, hidden_size=96, num_heads=4, intermediate_size=128))


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_shared_images_reproduce_per_question_vision(stem):
    """image_groups: `off` mode encodes each distinct image once; logits and gradients are unchanged."""
    model = new_model("tiny", "easyvqa", seed=4, stem=stem)
    pv, ids, mask = make_inputs(model, 6, 9, seed=4)
    groups = torch.tensor([3, 1, 3, 3, 7, 1])
    pv = pv[torch.tensor([0, 1, 0, 0, 4, 1])]  # rows of a group hold one image
    model.train()
    grads = []
    for g in (None, groups):
        model.zero_grad()
        out = model(pv, ids, mask, mode="off", image_groups=g, details=True)
        out.logits.square().sum().backward()
        grads.append([p.grad.clone() for p in model.backbone_parameters()])
        if g is None:
            ref = out
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.encoder_states[0], ref.encoder_states[0], atol=1e-5, rtol=0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # other modes leave the vision encoder per question: image_groups is ignored there
    pruning = randomize_trimmers(new_model("tiny", "easyvqa", seed=4, stem=stem), seed=4).eval()
    torch.testing.assert_close(pruning(pv, ids, mask, image_groups=groups).logits, pruning(pv, ids, mask).logits)


def test_encode_vision_is_the_forward_passes_vision_encoder():
    model = new_model("tiny", "easyvqa", seed=3).eval()
    pv, ids, mask = make_inputs(model, 3, 7, seed=3)
    with torch.no_grad():
        states = model(pv, ids, mask, mode="off", details=True).encoder_states[0]  # (B, 1 + P, D)
        encoded = model.encode_vision(pv)
    assert encoded.shape == states.shape == (3, 1 + model.config.num_patches, model.config.hidden_size)
    torch.testing.assert_close(encoded, states, atol=1e-6, rtol=0)


def test_outputs_without_accounting_say_so(tiny_model):
    """accounting=False (what the export traces) gives the same logits and no FLOPs; asking for a ratio says why."""
    inputs = make_inputs(tiny_model, 2, 5, seed=1)
    with torch.no_grad():
        bare, full = (tiny_model(*inputs, mode="prune", accounting=a) for a in (False, True))
    torch.testing.assert_close(bare.logits, full.logits, atol=0, rtol=0)
    assert bare.layer_flops is None and full.flops_ratio.shape == (2,)
    for attr in ("flops_ratio", "executed_flops_ratio"):
        with pytest.raises(ValueError, match="accounting=False"):
            getattr(bare, attr)


@pytest.mark.parametrize("vision_heads", [4, 2])
def test_merged_head_gates_are_each_trimmers_own(vision_heads):
    """Inference computes a depth's head gates in one projection per head count (`DepthHeadTrimmers`): each module's
    logits equal its own trimmer's up to float rounding, whichever stream it reads first, and its gate is
    `head_gate` of them (also as the (B, H, 1, 1) column a shared group hands out); prune mode decides the same with
    and without details (margins, masks)."""
    from trimkit.config import TEXT, VISION, EncoderSpec
    from trimkit.trimmers import head_gate

    vision = EncoderSpec(layers=2, hidden_size=64, num_heads=vision_heads, intermediate_size=128)
    model = randomize_trimmers(new_model("tiny", "easyvqa", seed=5, vision_encoder=vision), seed=5).eval()
    c, t = model.config, model.trim
    g = torch.Generator().manual_seed(5)
    groups = set()
    for ti in range(len(model.head_trimmers)):
        modules = c.attention_modules(t.first_trimmed_layer + ti)
        cls = [torch.randn(3, c.encoder(m).hidden_size, generator=g) for m in (VISION, TEXT)]
        merged = model.head_trimmers[ti](cls, [m for m, _ in modules], t.thresholds(ti)[1])
        assert sorted(merged) == list(range(len(modules)))
        heads = [c.layer_spec(t.first_trimmed_layer + ti, m).num_heads for m, _ in modules]
        groups.add(len(set(heads)))
        for j, (m, _) in enumerate(modules):
            ref = model.head_trimmers[ti][j](cls[m], cls[1 - m])
            logits, gate, column = merged[j]
            torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
            assert torch.equal(gate, head_gate(logits, training=False, tau=t.tau, threshold=t.thresholds(ti)[1]))
            # a shared group hands its gates out shaped; a module alone in its head count leaves that to attention
            if heads.count(heads[j]) > 1:
                assert torch.equal(column, gate[:, :, None, None])
            else:
                assert column is None
    assert groups == ({1} if vision_heads == 4 else {1, 2})  # a depth of mixed head counts: two projections
    inputs = make_inputs(model, 5, 11, seed=5)
    with torch.no_grad():
        plain = model(*inputs, mode="prune")
    detailed = run(model, inputs, "prune")
    torch.testing.assert_close(plain.logits, detailed.logits, atol=1e-5, rtol=0)
    assert torch.equal(plain.keep_counts, detailed.keep_counts)
