"""Evaluation: how close the gate decisions come to their thresholds (`trimkit eval`'s decision table)."""

import json

import pytest
import torch

import trimkit
from trimkit.cli import main
from trimkit.evaluate import closest_decisions
from trimkit.factory import new_model
from trimkit.trimmers import Idle

from .conftest import make_inputs, randomize_trimmers


def test_decisions_name_their_trimmer(pruning_model):
    """Each `TrimOutput.decisions` entry names its trimmer: one per non-idle trimmer, in forward order; token
    entries cover the layer's token slots, head entries the heads of that modality."""
    c = pruning_model.config
    pv, ids, mask = make_inputs(pruning_model, 3, 10)
    with torch.no_grad():
        out = pruning_model(pv, ids, mask, mode="mask", details=True)
    sources = [(d.trim_index, d.kind, d.modality) for d in out.decisions]
    assert len(sources) > 0 and sources == sorted(sources, key=lambda s: (s[0], s[1] == "heads"))
    first = pruning_model.trim.first_trimmed_layer
    tokens = [s for s in sources if s[1] == "tokens"]
    assert tokens == [(i, "tokens", m) for i in range(c.num_layers - first) for m in range(2)
                      if not isinstance(pruning_model.token_trimmers[i][m], Idle)]
    heads = [s for s in sources if s[1] == "heads"]
    assert heads == [(d - first, "heads", m) for d in range(first, c.num_layers)
                     for (m, _), tr in zip(c.attention_modules(d), pruning_model.head_trimmers[d - first])
                     if not isinstance(tr, Idle)]
    assert len(heads) == sum(len(c.attention_modules(d)) for d in range(first, c.num_layers))
    for (trim_index, kind, m), d in zip(sources, out.decisions):
        depth = pruning_model.trim.first_trimmed_layer + trim_index
        assert d.decides.shape == d.distance.shape == d.scale.shape
        if kind == "heads":
            assert d.distance.shape == (3, c.layer_spec(depth, m).num_heads)
        else:  # mask mode keeps every token slot: vision patches + [CLS], or the text length
            assert d.distance.shape[1] == (ids.shape[1] if m == 1 else out.token_masks[trim_index][0].shape[1])


def test_closest_decisions_by_hand(pruning_model):
    pv, ids, mask = make_inputs(pruning_model, 4, 12)
    with torch.no_grad():
        out = pruning_model(pv, ids, mask, mode="prune", details=True)
    rel, dist, layers = closest_decisions(out)
    for row in range(4):
        want_rel = want_dist = float("inf")
        want_layers = {}
        for d in out.decisions:
            trim_index, kind, m = d.trim_index, d.kind, d.modality
            for j in range(d.distance.shape[1]):
                if not d.decides[row, j]:
                    continue
                r = abs(float(d.distance[row, j])) / float(d.scale[row, j])
                want_rel, want_dist = min(want_rel, r), min(want_dist, abs(float(d.distance[row, j])))
                if kind == "tokens":
                    want_layers[trim_index, m] = min(want_layers.get((trim_index, m), float("inf")), r)
        assert float(rel[row]) == pytest.approx(want_rel, rel=1e-6)
        assert float(dist[row]) == pytest.approx(want_dist, rel=1e-6)
        for (trim_index, m), v in want_layers.items():
            assert float(layers[row, trim_index, m]) == pytest.approx(v, rel=1e-6)
        decided = {k for k in want_layers}
        for trim_index in range(layers.shape[1]):
            for m in range(2):
                if (trim_index, m) not in decided:
                    assert layers[row, trim_index, m] == float("inf")
    assert torch.isfinite(rel).all() and (rel > 0).all()


def test_eval_reports_decision_closeness(jsonl_data, tmp_path, capsys):
    ckpt = tmp_path / "t.pt"
    trimkit.save_checkpoint(randomize_trimmers(new_model("tiny", str(jsonl_data), seed=0), seed=2), ckpt)
    report = tmp_path / "eval.json"
    assert main(["eval", str(ckpt), "--data", str(jsonl_data), "--split", "train", "--samples", "40",
                 "--json", str(report)]) == 0
    assert "closest gate decision per question (prune)" in capsys.readouterr().out
    dec = json.loads(report.read_text())["prune"]["decisions"]
    rel, dist = dec["relative"], dec["absolute"]
    assert 0 < rel["p1"] <= rel["p5"] <= rel["p50"] and 0 < dist["p1"] <= dist["p5"] <= dist["p50"]
    per_layer = dec["token_relative_p1_per_layer"]
    assert len(per_layer) == len(json.loads(report.read_text())["trimmed_layers"])
    # a layer's closest token decision is never closer than the question's closest decision overall
    assert all(v >= rel["p1"] for row in per_layer for v in row if v is not None)
    assert any(v is not None for row in per_layer for v in row)


def test_using_trim_restores_the_models_own_config_whatever_happens(tiny_model):
    import dataclasses

    from trimkit.evaluate import using_trim

    own = tiny_model.trim
    other = dataclasses.replace(own, token_threshold=own.token_threshold + 1.0)
    with using_trim(tiny_model, other) as m:
        assert m is tiny_model and tiny_model.trim is other
    assert tiny_model.trim is own
    try:
        with using_trim(tiny_model):
            tiny_model.trim = other
            raise RuntimeError("a failed trial")
    except RuntimeError:
        pass
    assert tiny_model.trim is own
