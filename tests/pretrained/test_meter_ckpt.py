"""METER checkpoints (issue 31): a reference METER built from Hugging Face modules with random weights (CLIP vision
with QuickGELU, RoBERTa, BERT layers with cross-attention), written out in METER's key layout as a Lightning-style
`{"state_dict": ...}` file, imported, and compared with METER's forward computed on those modules."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch import nn

import trimkit
from trimkit.cli import main
from trimkit.errors import BadInputError
from trimkit.pretrained.meter_ckpt import CLIP_MEAN, CLIP_STD, import_meter_checkpoint

transformers = pytest.importorskip("transformers", reason="the METER reference is built from transformers modules")
tokenizers = pytest.importorskip("tokenizers", reason="the test tokenizer is trained offline with tokenizers")

TOL = 1e-5
QUESTIONS = ["What color is the circle?", "Is there a red shape in the image?", "what shape",
             "Does the image contain a blue triangle, or not?", "Is no green rectangle present?"]
ANSWERS = ["yes", "no", "red", "blue", "circle"]
HEAD_DIM = 16
DV, DT, D = 32, 48, 64  # image encoder, text encoder and fusion widths (heads: 2, 3, 4)


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    """A tiny byte-level BPE (RoBERTa's special tokens first), trained offline."""
    from trimkit.data.easyvqa import questions

    d = tmp_path_factory.mktemp("bpe")
    tok = tokenizers.ByteLevelBPETokenizer()
    tok.train_from_iterator(QUESTIONS + questions("train")[0][:2000], vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.save_model(str(d))
    return d


def _eager(cfg):
    cfg._attn_implementation = "eager"  # an explicit additive mask, as METER's transformers 4.x layers use
    return cfg


def _perturb(module: nn.Module, seed: int) -> None:
    """Random weights of a useful scale, non-trivial LayerNorms (1 + noise, noise)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name.lower() or "LayerNorm" in name or "layrnorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                p.copy_(0.15 * noise)


class MeterReference(nn.Module):
    """METER's modules, built from Hugging Face ones; `forward` is METER's `infer` + head."""

    def __init__(self, image_size: int, vocab: int, *, task: str = "vqa", answers: int = len(ANSWERS), seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.clip = transformers.CLIPVisionModel(_eager(transformers.CLIPVisionConfig(
            hidden_size=DV, intermediate_size=80, num_hidden_layers=2, num_attention_heads=DV // HEAD_DIM,
            image_size=image_size, patch_size=16, hidden_act="quick_gelu", layer_norm_eps=1e-5)))
        self.roberta = transformers.RobertaModel(_eager(transformers.RobertaConfig(
            vocab_size=vocab, hidden_size=DT, num_hidden_layers=3, num_attention_heads=DT // HEAD_DIM,
            intermediate_size=72, max_position_embeddings=40, layer_norm_eps=1e-5, pad_token_id=1, type_vocab_size=1)))
        cross = _eager(transformers.BertConfig(hidden_size=D, num_attention_heads=D // HEAD_DIM, intermediate_size=96,
                                               is_decoder=True, add_cross_attention=True))  # layer_norm_eps 1e-12
        self.text_layers = nn.ModuleList([transformers.models.bert.modeling_bert.BertLayer(cross) for _ in range(2)])
        self.image_layers = nn.ModuleList([transformers.models.bert.modeling_bert.BertLayer(cross) for _ in range(2)])
        self.text_transform, self.image_transform = nn.Linear(DT, D), nn.Linear(DV, D)
        self.token_type = nn.Embedding(2, D)
        self.text_pooler, self.image_pooler = nn.Linear(D, D), nn.Linear(D, D)
        self.task = task
        self.head = (nn.Sequential(nn.Linear(2 * D, 2 * D), nn.LayerNorm(2 * D), nn.GELU(), nn.Linear(2 * D, answers))
                     if task == "vqa" else nn.Linear(2 * D, 2))
        _perturb(self, seed)
        self.eval()

    def forward(self, pixel_values: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """pixel_values normalized with CLIP's mean and std, as METER's transforms do."""
        ext_t = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min  # (B, 1, 1, Nt)
        x = self.roberta.embeddings(input_ids=ids)
        for layer in self.roberta.encoder.layer:
            x = _first(layer(x, ext_t))
        x = self.text_transform(x)
        vm = getattr(self.clip, "vision_model", self.clip)  # transformers 5 flattens it
        y = vm.post_layernorm(self.clip(pixel_values=pixel_values).last_hidden_state)  # ln_post on every token
        y = self.image_transform(y)
        ext_i = torch.zeros(y.shape[0], 1, 1, y.shape[1])
        x, y = x + self.token_type.weight[0], y + self.token_type.weight[1]
        for tl, il in zip(self.text_layers, self.image_layers):
            x, y = (_first(tl(x, ext_t, encoder_hidden_states=y, encoder_attention_mask=ext_i)),
                    _first(il(y, ext_i, encoder_hidden_states=x, encoder_attention_mask=ext_t)))
        feats = torch.cat([torch.tanh(self.text_pooler(x[:, 0])), torch.tanh(self.image_pooler(y[:, 0]))], dim=-1)
        return self.head(feats)

    def meter_state(self) -> dict[str, torch.Tensor]:
        """The weights under METER's checkpoint keys (CLIP's visual transformer with packed q/k/v, RoBERTa as
        saved by transformers, BERT cross layers, the heads), plus the tensors METER stores but never reads."""
        vm = getattr(self.clip, "vision_model", self.clip)  # transformers 5 flattens it
        v = "vit_model.visual."
        s = {v + "conv1.weight": vm.embeddings.patch_embedding.weight,
             v + "class_embedding": vm.embeddings.class_embedding,
             v + "positional_embedding": vm.embeddings.position_embedding.weight}
        for src, dst in ((vm.pre_layrnorm, "ln_pre"), (vm.post_layernorm, "ln_post")):
            s[f"{v}{dst}.weight"], s[f"{v}{dst}.bias"] = src.weight, src.bias
        for i, layer in enumerate(vm.encoder.layers):
            b, a = f"{v}transformer.resblocks.{i}.", layer.self_attn
            s[b + "attn.in_proj_weight"] = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
            s[b + "attn.in_proj_bias"] = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
            for src, dst in ((a.out_proj, "attn.out_proj"), (layer.layer_norm1, "ln_1"), (layer.layer_norm2, "ln_2"),
                             (layer.mlp.fc1, "mlp.c_fc"), (layer.mlp.fc2, "mlp.c_proj")):
                s[f"{b}{dst}.weight"], s[f"{b}{dst}.bias"] = src.weight, src.bias
        # the CLIP text tower's leftovers METER keeps in vit_model
        s["vit_model.token_embedding.weight"] = torch.randn(50, DV)
        s["vit_model.positional_embedding"] = torch.randn(77, DV)
        s["vit_model.ln_final.weight"], s["vit_model.ln_final.bias"] = torch.ones(DV), torch.zeros(DV)
        s |= {f"text_transformer.{k}": t for k, t in self.roberta.state_dict().items()}  # pooler included
        for stream, layers in (("text", self.text_layers), ("image", self.image_layers)):
            s |= {f"cross_modal_{stream}_layers.{k}": t for k, t in layers.state_dict().items()}
        for name, mod in (("cross_modal_text_transform", self.text_transform),
                          ("cross_modal_image_transform", self.image_transform),
                          ("token_type_embeddings", self.token_type),
                          ("cross_modal_text_pooler.dense", self.text_pooler),
                          ("cross_modal_image_pooler.dense", self.image_pooler)):
            s |= {f"{name}.{k}": t for k, t in mod.state_dict().items()}
        head = "vqa_classifier" if self.task == "vqa" else "itm_score.fc"
        s |= {f"{head}.{k}": t for k, t in self.head.state_dict().items()}
        return {k: t.detach().clone() for k, t in s.items()}


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _vocab_size(bpe_dir) -> int:
    return len(json.loads((bpe_dir / "vocab.json").read_text()))


def _write(ref: MeterReference, path, **extra) -> None:
    torch.save({"state_dict": ref.meter_state(), "epoch": 3, "global_step": 100, **extra}, path)


def _hf_pixels(pix: torch.Tensor) -> torch.Tensor:
    """trimkit's [-1, 1] pixels as METER's CLIP-normalized input."""
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    return ((pix + 1) / 2 - mean) / std


@pytest.mark.parametrize("image_size", [224, 288])
def test_keep_everything_equals_meter_forward(tmp_path, bpe_dir, image_size):
    ref = MeterReference(image_size, _vocab_size(bpe_dir), seed=image_size)
    ckpt = tmp_path / "meter.ckpt"
    _write(ref, ckpt)
    model = import_meter_checkpoint(ckpt, tokenizer=bpe_dir, labels=ANSWERS, head_dim=HEAD_DIM, max_text_len=24)
    c = model.config
    assert c.image_size == image_size and c.num_patches + 1 == (image_size // 16) ** 2 + 1
    assert c.encoder(0).layers == 2 and c.encoder(1).layers == 3 and c.fusion_layers == 2
    g = torch.Generator().manual_seed(1)
    batches = [QUESTIONS, QUESTIONS[2:3], QUESTIONS[3:4]]  # ragged (5 lengths), short, long
    for texts in batches:
        pix = torch.rand(len(texts), 3, image_size, image_size, generator=g) * 2 - 1
        ids, mask = model.tokenizer.encode(texts)
        with torch.no_grad():
            want = ref(_hf_pixels(pix), ids, mask)
            got_prune = model(pix, ids, mask, mode="prune")
            got_off = model(pix, ids, mask, mode="off")
        if len(texts) > 1:  # logits that differ by input: the comparison can fail
            assert (want - want.mean(dim=0)).abs().max() > 0.02  # 2000x the tolerance
        assert (got_prune.logits - want).abs().max() <= TOL, texts
        assert (got_off.logits - want).abs().max() <= TOL, texts
        assert (got_prune.flops_ratio == 1).all()  # stable init keeps everything
        assert (got_prune.keep_counts[:, :, 0] == c.num_patches + 1).all()


def test_image_size_resamples_positions_as_meter_does(tmp_path, bpe_dir):
    """--image-size 224 on a 288 px checkpoint equals METER at 224: its positions resampled bicubically on the
    patch grid, the [CLS] row kept (METER's adapt_position_encoding)."""
    ref = MeterReference(288, _vocab_size(bpe_dir), seed=7)
    _write(ref, tmp_path / "m.ckpt")
    model = import_meter_checkpoint(tmp_path / "m.ckpt", tokenizer=bpe_dir, labels=ANSWERS, head_dim=HEAD_DIM,
                                    max_text_len=24, image_size=224)
    small = MeterReference(224, _vocab_size(bpe_dir))
    state, own = ref.state_dict(), small.state_dict()
    key = next(k for k in state if k.endswith("position_embedding.weight"))
    pos = state[key]  # (1 + 18*18, DV)
    grid = pos[1:].reshape(18, 18, DV).permute(2, 0, 1)[None]  # (1, DV, 18, 18)
    grid = nn.functional.interpolate(grid, size=(14, 14), mode="bicubic")  # (1, DV, 14, 14)
    state[key] = torch.cat([pos[:1], grid[0].permute(1, 2, 0).reshape(14 * 14, DV)])  # (1 + 14*14, DV)
    small.load_state_dict({k: own[k] if k.endswith("position_ids") else v for k, v in state.items()})
    pix = torch.rand(3, 3, 224, 224) * 2 - 1
    ids, mask = model.tokenizer.encode(QUESTIONS[:3])
    with torch.no_grad():
        want = small(_hf_pixels(pix), ids, mask)
        assert (model(pix, ids, mask, mode="prune").logits - want).abs().max() <= TOL
    assert model.config.num_patches == 14 * 14 and (want - want.mean(dim=0)).abs().max() > 0.02


def test_vision_keys_without_the_visual_prefix(tmp_path, bpe_dir):
    """CLIP's visual transformer stored directly under vit_model.* (no CLIP text-tower leftovers) imports too."""
    ref = MeterReference(224, _vocab_size(bpe_dir), seed=11)
    leftovers = {"vit_model.token_embedding.weight", "vit_model.positional_embedding", "vit_model.ln_final.weight",
                 "vit_model.ln_final.bias"}
    state = {k.replace("vit_model.visual.", "vit_model."): v for k, v in ref.meter_state().items()
             if k not in leftovers}
    torch.save({"state_dict": state}, tmp_path / "m.ckpt")
    model = import_meter_checkpoint(tmp_path / "m.ckpt", tokenizer=bpe_dir, labels=ANSWERS, head_dim=HEAD_DIM,
                                    max_text_len=24)
    pix = torch.rand(2, 3, 224, 224) * 2 - 1
    ids, mask = model.tokenizer.encode(QUESTIONS[:2])
    with torch.no_grad():
        assert (model(pix, ids, mask, mode="prune").logits - ref(_hf_pixels(pix), ids, mask)).abs().max() <= TOL


def test_flops_count_both_fusion_entry_projections(tmp_path, bpe_dir):
    """METER projects both streams at the fusion entry (equal widths too): the FLOPs model counts what runs."""
    from torch.utils.flop_counter import FlopCounterMode

    from tests.test_cost import counted_layer_flops

    _write(MeterReference(224, _vocab_size(bpe_dir)), tmp_path / "m.ckpt")
    model = import_meter_checkpoint(tmp_path / "m.ckpt", tokenizer=bpe_dir, labels=ANSWERS, head_dim=HEAD_DIM,
                                    max_text_len=24)
    pix = torch.rand(1, 3, 224, 224) * 2 - 1
    ids, mask = model.tokenizer.encode(QUESTIONS[1:2])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(pix, ids, mask, mode="prune")
    counts = counter.get_flop_counts()
    projections = sum(sum(counts[f"MeterModel.fusion_proj.{m}"].values()) for m in (0, 1))
    assert projections == 2 * D * (197 * DV + ids.shape[1] * DT)
    layers, out = counted_layer_flops(model, pix, ids, mask)
    entry = model.config.encoder_depth
    for depth, n in enumerate(layers):  # the idling vision stream at depth 2 included
        assert out.layer_flops[0, depth].item() == pytest.approx(n + (projections if depth == entry else 0), rel=0.01)


def test_itm_head(tmp_path, bpe_dir):
    ref = MeterReference(224, _vocab_size(bpe_dir), task="itm", seed=5)
    ckpt = tmp_path / "itm.ckpt"
    _write(ref, ckpt)
    model = import_meter_checkpoint(ckpt, tokenizer=bpe_dir, task="itm", head_dim=HEAD_DIM, max_text_len=24)
    assert model.labels == ["mismatch", "match"] and model.config.classifier_head == "linear"
    pix = torch.rand(3, 3, 224, 224) * 2 - 1
    ids, mask = model.tokenizer.encode(QUESTIONS[:3])
    with torch.no_grad():
        assert (model(pix, ids, mask, mode="prune").logits - ref(_hf_pixels(pix), ids, mask)).abs().max() <= TOL


def test_bpe_ids_match_roberta_tokenizer(tmp_path, bpe_dir):
    ref = MeterReference(224, _vocab_size(bpe_dir))
    _write(ref, tmp_path / "m.ckpt")
    model = import_meter_checkpoint(tmp_path / "m.ckpt", tokenizer=bpe_dir, labels=ANSWERS, head_dim=HEAD_DIM,
                                    max_text_len=24)
    hf = transformers.RobertaTokenizer(str(bpe_dir / "vocab.json"), str(bpe_dir / "merges.txt"))
    for q in QUESTIONS + ["  two  spaces, tabs\tand  ünïcödé!?", "It's 42 shapes'll do", "zzqx unseen-word"]:
        assert model.tokenizer.encode_one(q) == hf(q, truncation=True, max_length=24)["input_ids"], q
    long = " ".join(["circle"] * 40)
    assert len(hf(long)["input_ids"]) > 24  # truncated: </s> stays last
    assert model.tokenizer.encode_one(long) == hf(long, truncation=True, max_length=24)["input_ids"]
    # the tokenizer travels with the checkpoint
    trimkit.save_checkpoint(model, tmp_path / "t.pt")
    assert trimkit.load_checkpoint(tmp_path / "t.pt").tokenizer.encode_one(QUESTIONS[0]) == hf(QUESTIONS[0])["input_ids"]


def _one_line_exit_2(capsys, args) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    return err[0]


def test_bad_checkpoints_are_one_line_exit_2(tmp_path, bpe_dir, capsys):
    ref = MeterReference(224, _vocab_size(bpe_dir))
    state = ref.meter_state()
    out = tmp_path / "out.pt"
    base = ["--tokenizer", str(bpe_dir), "--head-dim", str(HEAD_DIM), "--max-text-len", "24", "--out", str(out)]
    missing = dict(state)
    del missing["cross_modal_image_layers.1.crossattention.output.dense.bias"]
    torch.save({"state_dict": missing}, tmp_path / "missing.ckpt")
    line = _one_line_exit_2(capsys, ["import", str(tmp_path / "missing.ckpt"), *base])
    assert "missing cross_modal_image_layers.1.crossattention.output.dense.bias" in line
    torch.save({"state_dict": state | {"vit_model.visual.extra_adapter.weight": torch.zeros(2)}},
               tmp_path / "extra.ckpt")
    line = _one_line_exit_2(capsys, ["import", str(tmp_path / "extra.ckpt"), *base])
    assert "unexpected vit_model.visual.extra_adapter.weight" in line
    # a checkpoint that needs more than weights_only=True to load is refused, never unpickled
    _write(ref, tmp_path / "pickled.ckpt", hyper_parameters=argparse.Namespace(lr=1e-4))
    assert "refused" in _one_line_exit_2(capsys, ["import", str(tmp_path / "pickled.ckpt"), *base])
    _write(ref, tmp_path / "ok.ckpt")
    assert "--tokenizer" in _one_line_exit_2(capsys, ["import", str(tmp_path / "ok.ckpt"), "--out", str(out)])
    assert "nlvr2" in _one_line_exit_2(capsys, ["import", str(tmp_path / "ok.ckpt"), *base, "--task", "nlvr2"])
    (tmp_path / "labels.txt").write_text("yes\nno\n")
    assert "2 answers" in _one_line_exit_2(capsys, ["import", str(tmp_path / "ok.ckpt"), *base, "--labels",
                                                    str(tmp_path / "labels.txt")])
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    assert "not a METER checkpoint" in _one_line_exit_2(capsys, ["import", str(tmp_path / "other.ckpt"), *base])
    assert not out.exists()
    with pytest.raises(BadInputError, match="multiple of the head size"):
        import_meter_checkpoint(tmp_path / "ok.ckpt", tokenizer=bpe_dir, labels=ANSWERS, head_dim=64, max_text_len=24)


@pytest.mark.slow  # the ONNX export and verify of a 7-layer model: minutes on a shared 2-core machine
def test_cli_import_then_train_export_verify(tmp_path, bpe_dir, capsys):
    """The imported model trains (trimmers learn, backbone frozen), exports (adaptive) and verifies. Imported at
    64 px from a 224 px checkpoint (positions resampled) with a new answer layer over easy-VQA's answers."""
    pytest.importorskip("onnxruntime")
    _write(MeterReference(224, _vocab_size(bpe_dir)), tmp_path / "meter.ckpt")
    ckpt = tmp_path / "base.pt"
    assert main(["import", str(tmp_path / "meter.ckpt"), "--tokenizer", str(bpe_dir), "--head-dim", str(HEAD_DIM),
                 "--data", "easyvqa", "--image-size", "64", "--max-text-len", "24", "--out", str(ckpt)]) == 0
    printed = capsys.readouterr().out
    assert "clip (2 layers, 32 wide, 64px / 16)" in printed and "roberta (3 layers" in printed
    assert "answers: a new answer layer over easyvqa's 13" in printed
    trained = tmp_path / "trimmed.pt"
    assert main(["train", str(ckpt), "--data", "easyvqa", "--steps", "3", "--batch-size", "8", "--target-ratio", "0.5",
                 "--freeze", "both", "--lr", "1e-2", "--eval-samples", "16", "--out", str(trained), "--quiet"]) == 0
    a, b = trimkit.load_checkpoint(ckpt), trimkit.load_checkpoint(trained)
    assert any(not torch.equal(p, q) for p, q in zip(a.trimmer_parameters(), b.trimmer_parameters()))
    for m in (0, 1):  # --freeze both: the encoders stay METER's
        assert all(torch.equal(p, q) for p, q in zip(a.encoder_parameters(m), b.encoder_parameters(m)))
    assert b.tokenizer.to_dict()["type"] == "bpe" and b.config.fusion_proj_always and not b.config.pool_norm
    assert main(["export", str(trained), "--format", "onnx", "--out", str(tmp_path / "t.onnx")]) == 0
    assert main(["verify", str(trained), str(tmp_path / "t.onnx"), "--samples", "16", "--batch-sizes", "1,3",
                 "--text-lens", "6,12", "--repeats", "1"]) == 0


def test_meter_options_default_to_the_existing_model():
    """The METER options are off by default (existing checkpoints build the same modules); on, they build
    METER's pieces; QuickGELU is transformers' function."""
    from trimkit.config import EncoderSpec, ModelConfig, preset_config
    from trimkit.models import build_model
    from trimkit.models.layers import Mlp

    old = build_model(preset_config("tiny"))
    assert isinstance(old.vision_norm, nn.LayerNorm) and isinstance(old.fusion_proj[0], nn.Identity)
    assert len(old.classifier) == 4 and old.classifier[1].eps == old.config.layer_norm_eps
    assert ModelConfig.from_dict({k: v for k, v in old.config.to_dict().items()
                                  if k not in ("fusion_proj_always", "pool_norm", "classifier_norm_eps",
                                               "classifier_head")}) == old.config
    new = build_model(preset_config("tiny", fusion_proj_always=True, pool_norm=False, classifier_norm_eps=1e-5,
                                    classifier_head="linear"))
    assert isinstance(new.vision_norm, nn.Identity) and isinstance(new.fusion_proj[1], nn.Linear)
    assert len(new.classifier) == 1 and new.classifier[0].out_features == new.config.num_labels
    with pytest.raises(ValueError, match="activation"):
        EncoderSpec(1, 8, 2, 16, activation="relu")
    mlp = Mlp(8, 16, act="quick_gelu")
    x = torch.randn(4, 8)
    ref = mlp.fc2(transformers.activations.QuickGELUActivation()(mlp.fc1(x)))
    exact = Mlp(8, 16)
    exact.load_state_dict(mlp.state_dict())  # same weights, exact GELU: a different function
    assert torch.equal(mlp(x), ref) and not torch.allclose(exact(x), ref, atol=1e-4)
