"""The analytic FLOPs model against an independent count of the executed matmuls."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from trimkit.cost import attention_flops, ffn_flops
from trimkit.models import MeterModel

from .conftest import make_inputs


def counted_layer_flops(model: MeterModel, *inputs) -> tuple[list[int], object]:
    """Matmul FLOPs per lockstep layer, counted by torch's FlopCounterMode on the prune path."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(*inputs, mode="prune")
    per_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    c = model.config
    layers = []
    for depth in range(c.num_layers):
        if depth < c.encoder_layers:
            names = [f"vision_layers.{depth}", f"text_layers.{depth}"]
        else:
            f = depth - c.encoder_layers
            names = [f"vision_fusion.{f}", f"text_fusion.{f}"]
        layers.append(sum(per_module.get(f"MeterModel.{n}", 0) for n in names))
    return layers, out


@pytest.mark.parametrize("pruned", [False, True])
def test_flops_model_matches_counted_matmuls(tiny_model, pruning_model, pruned):
    model = pruning_model if pruned else tiny_model
    for seed in range(4):
        pv, ids, mask = make_inputs(model, 1, 12, seed=seed, ragged=False)
        counted, out = counted_layer_flops(model, pv, ids, mask)
        analytic = out.layer_flops[0].tolist()
        for a, n in zip(analytic, counted):
            assert a == pytest.approx(n, rel=0.01)
        if pruned:
            assert out.flops_ratio.item() < 0.95  # the check covers real pruning
        else:
            assert out.flops_ratio.item() == pytest.approx(1.0)


def test_attention_flops_terms():
    from trimkit.config import preset_config

    c = preset_config("tiny")
    d, dh = c.hidden_size, c.head_dim
    assert attention_flops(5, 7, 2, c) == 2 * (5 * d * 2 * dh + 2 * 7 * d * 2 * dh + 2 * 5 * 7 * 2 * dh + 5 * 2 * dh * d)
    assert ffn_flops(3, c) == 4 * 3 * d * c.intermediate_size
    assert attention_flops(5, 7, 0, c) == 0


def test_ratio_is_differentiable_in_mask_training(tiny_model):
    model = tiny_model.train()
    pv, ids, mask = make_inputs(model, 2, 8)
    out = model(pv, ids, mask, mode="mask")
    out.flops_ratio.mean().backward()
    grads = [p.grad for p in model.token_trimmers[0][0].fc2.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
