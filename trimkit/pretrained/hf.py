"""Hugging Face encoders saved locally (`save_pretrained` directories): read config + weights without
`transformers`, and map the weights onto trimkit's layers by name.

Supported families (`model_type` in config.json):
- text:   bert (BERT, MiniLM and other BERT-architecture checkpoints): post-LN, embedding LayerNorm;
- vision: vit (ViT: pre-LN, final LayerNorm) and dinov2 (pre-LN with LayerScale, final LayerNorm).
Old (transformers 4.x: `attention.attention.query`) and new (5.x: `attention.q_proj`) key names are
both understood. Weights are read with safetensors or `torch.load(weights_only=True)`: no pickled code runs.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..config import TEXT, VISION, EncoderSpec
from ..errors import BadInputError, import_optional

__all__ = ["HFEncoder", "read_encoder", "read_blip", "SUPPORTED", "BLIP_ARCHITECTURES", "canonical_layers",
           "interpolate_positions"]

SUPPORTED = {"bert": TEXT, "vit": VISION, "dinov2": VISION}
BLIP_ARCHITECTURES = ("BlipForQuestionAnswering", "BlipForImageTextRetrieval")

# per-layer key (after the layer prefix, without .weight/.bias) -> canonical part
_LAYER_PARTS = {
    "attention.self.query": "q", "attention.attention.query": "q", "attention.q_proj": "q",
    "attention.self.key": "k", "attention.attention.key": "k", "attention.k_proj": "k",
    "attention.self.value": "v", "attention.attention.value": "v", "attention.v_proj": "v",
    "attention.output.dense": "o", "attention.o_proj": "o",
    "attention.output.LayerNorm": "norm1", "layernorm_before": "norm1", "norm1": "norm1",
    "output.LayerNorm": "norm2", "layernorm_after": "norm2", "norm2": "norm2",
    "intermediate.dense": "fc1", "mlp.fc1": "fc1",
    "output.dense": "fc2", "mlp.fc2": "fc2",
    "layer_scale1.lambda1": "ls1", "layer_scale2.lambda1": "ls2",
    # BLIP vision (fused qkv) and BLIP text (cross-attention in every layer)
    "self_attn.qkv": "qkv", "self_attn.projection": "o", "layer_norm1": "norm1", "layer_norm2": "norm2",
    "crossattention.self.query": "cq", "crossattention.self.key": "ck", "crossattention.self.value": "cv",
    "crossattention.output.dense": "co", "crossattention.output.LayerNorm": "cnorm",
}
_LAYER_KEY = re.compile(r"^(?:.*\.)?(?:encoder\.layer|layers?)\.(\d+)\.(.+?)(?:\.(weight|bias))?$")
_EMBED_PARTS = {  # non-layer keys (suffix match after stripping the model prefix) -> canonical
    "embeddings.word_embeddings.weight": "word", "embeddings.position_embeddings.weight": "text_pos",
    "embeddings.token_type_embeddings.weight": "token_type", "embeddings.LayerNorm.weight": "embed_norm.weight",
    "embeddings.LayerNorm.bias": "embed_norm.bias", "embeddings.cls_token": "cls",
    "embeddings.position_embeddings": "vision_pos", "embeddings.patch_embeddings.projection.weight": "patch.weight",
    "embeddings.patch_embeddings.projection.bias": "patch.bias", "layernorm.weight": "final_norm.weight",
    "layernorm.bias": "final_norm.bias",
    "embeddings.class_embedding": "cls", "embeddings.position_embedding": "vision_pos",
    "embeddings.patch_embedding.weight": "patch.weight", "embeddings.patch_embedding.bias": "patch.bias",
    "post_layernorm.weight": "final_norm.weight", "post_layernorm.bias": "final_norm.bias",
}


@dataclass
class HFEncoder:
    """One pretrained encoder, its weights in canonical names."""

    path: Path
    family: str  # bert | vit | dinov2
    modality: int  # VISION or TEXT
    spec: EncoderSpec
    config: dict
    layers: list[dict[str, Tensor]]  # per layer: q.weight, q.bias, ..., ls1, ls2
    embed: dict[str, Tensor]  # word, text_pos, token_type, embed_norm.*, cls, vision_pos, patch.*, final_norm.*
    vocab_file: Path | None = None
    lowercase: bool = True
    strip_accents: bool | None = None  # None: as lowercase (BERT's rule)
    pixel_mean: list[float] | None = None  # from preprocessor_config.json (None: the model reads [-1, 1])
    pixel_std: list[float] | None = None

    @property
    def patch_size(self) -> int:
        p = self.config.get("patch_size", 16)
        return int(p[0] if isinstance(p, (list, tuple)) else p)

    @property
    def image_size(self) -> int:
        s = self.config.get("image_size", 224)
        return int(s[0] if isinstance(s, (list, tuple)) else s)


def _load_weights(d: Path) -> dict[str, Tensor]:
    st = d / "model.safetensors"
    index = d / "model.safetensors.index.json"
    if st.exists() or index.exists():
        load_file = import_optional("safetensors.torch", "reading .safetensors weights needs the safetensors "
                                    "package: pip install safetensors").load_file
        files = [st] if st.exists() else sorted({d / f for f in json.loads(index.read_text())["weight_map"].values()})
        out: dict[str, Tensor] = {}
        for f in files:
            out.update(load_file(str(f)))
        return out
    binf = d / "pytorch_model.bin"
    if binf.exists():
        try:
            return torch.load(binf, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a pickle that needs code is refused, not run
            raise BadInputError(f"{binf}: cannot load the weights safely ({type(e).__name__})") from None
    raise BadInputError(f"{d}: no model.safetensors or pytorch_model.bin")


def canonical_layers(state: dict[str, Tensor], n_layers: int) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
    """Split a Hugging Face state dict into per-layer canonical parts and canonical embedding/norm parts."""
    layers: list[dict[str, Tensor]] = [{} for _ in range(n_layers)]
    embed: dict[str, Tensor] = {}
    for key, value in state.items():
        m = _LAYER_KEY.match(key)
        if m and m.group(2) in _LAYER_PARTS:
            i = int(m.group(1))
            if i >= n_layers:
                raise BadInputError(f"weight {key} belongs to layer {i}, but the config has {n_layers} layers")
            part = _LAYER_PARTS[m.group(2)]
            layers[i][part if part.startswith("ls") else f"{part}.{m.group(3)}"] = value
            continue
        for suffix, part in _EMBED_PARTS.items():
            if key == suffix or key.endswith("." + suffix):
                embed[part] = value
                break
    return layers, embed


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise BadInputError(msg)


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def read_config(d: Path) -> dict:
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        raise BadInputError(f"{d}: not a Hugging Face model directory (no config.json)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise BadInputError(f"{cfg_file}: not valid JSON ({e.msg})") from None
    if not isinstance(cfg, dict):
        raise BadInputError(f"{cfg_file}: not a model config (a JSON object)")
    return cfg


def _pixel_stats(enc: HFEncoder) -> None:
    pre = enc.path / "preprocessor_config.json"
    if pre.is_file():
        p = json.loads(pre.read_text())
        if p.get("do_normalize", True) and "image_mean" in p:
            enc.pixel_mean, enc.pixel_std = list(p["image_mean"]), list(p["image_std"])


def _text_vocab(enc: HFEncoder) -> None:
    vocab = enc.path / "vocab.txt"
    enc.vocab_file = vocab if vocab.is_file() else None
    tok_cfg = enc.path / "tokenizer_config.json"
    if tok_cfg.is_file():
        t = json.loads(tok_cfg.read_text())
        enc.lowercase = bool(t.get("do_lower_case", True))
        enc.strip_accents = t.get("strip_accents")


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """A malformed model (missing config keys, impossible sizes, corrupt weights) is bad input: one line, exit 2."""
    try:
        yield
    except BadInputError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError, IndexError, OSError) as e:
        raise BadInputError(f"{path}: cannot read this model ({type(e).__name__}: {e})") from None
    except Exception as e:
        if type(e).__name__ == "SafetensorError":  # safetensors' parse error (a corrupt file)
            raise BadInputError(f"{path}: corrupt safetensors weights ({e})") from None
        raise


def read_encoder(path: str | Path) -> HFEncoder:
    """Read a `save_pretrained` directory of a supported encoder, or a DINOv2 `.onnx` export (which carries
    no preprocessing config: DINOv2's ImageNet normalization is assumed and folded in)."""
    with reading(Path(path)):
        return _read_encoder(Path(path))


def _read_encoder(d: Path) -> HFEncoder:
    if d.suffix == ".onnx" and d.is_file():
        from .onnx_vit import read_onnx_dinov2

        return read_onnx_dinov2(d, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD)
    if not d.is_dir():
        raise BadInputError(f"{d}: no such model directory (or .onnx file)")
    cfg = read_config(d)
    family = cfg.get("model_type")
    if family not in SUPPORTED:
        raise BadInputError(f"{d}: model_type {family!r} is not supported; supported encoders: "
                            f"{', '.join(SUPPORTED)} (and blip via `trimkit import BLIP_DIR`)")
    act = cfg.get("hidden_act", "gelu")
    _check(act == "gelu", f"{d}: hidden_act {act!r} is not supported (only exact 'gelu')")
    hidden, heads, n_layers = int(cfg["hidden_size"]), int(cfg["num_attention_heads"]), int(cfg["num_hidden_layers"])
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    if family == "bert":
        _check(cfg.get("position_embedding_type", "absolute") == "absolute",
               f"{d}: only absolute position embeddings are supported")
        spec = EncoderSpec(n_layers, hidden, heads, int(cfg["intermediate_size"]), norm="post",
                           layer_norm_eps=eps, embed_norm=True)
    elif family == "vit":
        spec = EncoderSpec(n_layers, hidden, heads, int(cfg["intermediate_size"]), layer_norm_eps=eps,
                           final_norm=True)
    else:  # dinov2
        _check(not cfg.get("use_swiglu_ffn", False), f"{d}: DINOv2 with a SwiGLU FFN is not supported")
        _check(not cfg.get("num_register_tokens", 0), f"{d}: DINOv2 with register tokens is not supported")
        spec = EncoderSpec(n_layers, hidden, heads, int(hidden * cfg.get("mlp_ratio", 4)), layer_norm_eps=eps,
                           layer_scale=True, final_norm=True)
    layers, embed = canonical_layers(_load_weights(d), n_layers)
    enc = HFEncoder(d, family, SUPPORTED[family], spec, cfg, layers, embed)
    if family in ("vit", "dinov2") and not cfg.get("qkv_bias", True):
        for layer in layers:  # no q/k/v biases: zeros are the same function
            for p in "qkv":
                layer[f"{p}.bias"] = torch.zeros(hidden)
    if family == "bert":
        _text_vocab(enc)
    else:
        _pixel_stats(enc)
    _check_complete(enc)
    return enc


def read_blip(path: str | Path) -> tuple[HFEncoder, HFEncoder]:
    """A BLIP directory (BlipForQuestionAnswering / BlipForImageTextRetrieval) -> (image encoder, text
    encoder). The text encoder's layers carry cross-attention parts (cq, ck, cv, co, cnorm): in trimkit they
    become text-only fusion layers. BLIP's answer decoder and retrieval heads are not used."""
    with reading(Path(path)):
        return _read_blip(Path(path))


def _read_blip(d: Path) -> tuple[HFEncoder, HFEncoder]:
    cfg = read_config(d)
    arch = (cfg.get("architectures") or ["?"])[0]
    if cfg.get("model_type") != "blip" or arch not in BLIP_ARCHITECTURES:
        raise BadInputError(f"{d}: {arch} ({cfg.get('model_type')!r}) is not a supported BLIP model; supported: "
                            f"{', '.join(BLIP_ARCHITECTURES)}")
    vc, tc = cfg.get("vision_config") or {}, cfg.get("text_config") or {}
    for part, c in (("vision", vc), ("text", tc)):
        act = c.get("hidden_act", "gelu")
        _check(act == "gelu", f"{d}: {part} hidden_act {act!r} is not supported (only exact 'gelu')")
    state = _load_weights(d)
    vis_state = {k[len("vision_model."):]: v for k, v in state.items() if k.startswith("vision_model.")}
    txt_state = {k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")}
    _check(bool(vis_state) and bool(txt_state), f"{d}: no vision_model.* or text_encoder.* weights")
    # transformers' BLIP defaults, where a saved config leaves them out
    nv, dv = int(vc.get("num_hidden_layers", 12)), int(vc.get("hidden_size", 768))
    vspec = EncoderSpec(nv, dv, int(vc.get("num_attention_heads", 12)), int(vc.get("intermediate_size", 3072)),
                        layer_norm_eps=float(vc.get("layer_norm_eps", 1e-5)), final_norm=True)
    nt, dt = int(tc.get("num_hidden_layers", 12)), int(tc.get("hidden_size", 768))
    tspec = EncoderSpec(nt, dt, int(tc.get("num_attention_heads", 12)), int(tc.get("intermediate_size", 3072)),
                        norm="post", layer_norm_eps=float(tc.get("layer_norm_eps", 1e-12)), embed_norm=True)
    vl, ve = canonical_layers(vis_state, nv)
    for layer in vl:  # fused qkv -> q, k, v
        for kind in ("weight", "bias"):
            qkv = layer.pop(f"qkv.{kind}", None)
            if qkv is not None:
                layer[f"q.{kind}"], layer[f"k.{kind}"], layer[f"v.{kind}"] = qkv.chunk(3, dim=0)
    vcfg = dict(vc, model_type="blip", architectures=[arch], image_size=vc.get("image_size", 384),
                patch_size=vc.get("patch_size", 16))
    vision = HFEncoder(d, "blip", VISION, vspec, vcfg, vl, ve)
    _pixel_stats(vision)
    tl, te = canonical_layers(txt_state, nt)
    text = HFEncoder(d, "blip", TEXT, tspec, dict(tc, model_type="blip"), tl, te)
    _text_vocab(text)
    _check_complete(vision)
    _check_complete(text, cross=True)
    return vision, text


def _check_complete(enc: HFEncoder, *, cross: bool = False) -> None:
    need = ["q.weight", "q.bias", "k.weight", "k.bias", "v.weight", "v.bias", "o.weight", "o.bias",
            "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "fc1.weight", "fc1.bias", "fc2.weight",
            "fc2.bias"] + (["ls1", "ls2"] if enc.spec.layer_scale else [])
    if cross:
        need += [f"{p}.{k}" for p in ("cq", "ck", "cv", "co", "cnorm") for k in ("weight", "bias")]
    for i, layer in enumerate(enc.layers):
        missing = [k for k in need if k not in layer]
        _check(not missing, f"{enc.path}: layer {i} lacks {', '.join(missing)}")
    emb = (["word", "text_pos", "embed_norm.weight", "embed_norm.bias"] if enc.modality == TEXT
           else ["cls", "vision_pos", "patch.weight", "patch.bias", "final_norm.weight", "final_norm.bias"])
    missing = [k for k in emb if k not in enc.embed]
    _check(not missing, f"{enc.path}: embeddings lack {', '.join(missing)}")


def interpolate_positions(pos: Tensor, grid: int) -> Tensor:
    """(1, 1 + G*G, D) position embeddings -> (1, 1 + grid*grid, D): bicubic, as ViT/DINOv2 in transformers."""
    n = pos.shape[1] - 1
    g = int(round(n ** 0.5))
    _check(g * g == n, f"position embeddings of {n} patches are not a square grid")
    if g == grid:
        return pos
    d = pos.shape[-1]
    patch = pos[:, 1:].reshape(1, g, g, d).permute(0, 3, 1, 2).float()
    patch = torch.nn.functional.interpolate(patch, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, grid * grid, d).to(pos.dtype)], dim=1)
