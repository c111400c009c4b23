"""A METER-style trimkit model from pretrained encoders: any supported image encoder + any supported text
encoder + new co-attention fusion layers and classifier (random init), trimmers at their stable init."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import TEXT, VISION, ModelConfig, TrimConfig
from ..data.tokenizer import WordPieceTokenizer, WordTokenizer
from ..errors import BadInputError
from ..models import MeterModel, build_model
from .hf import HFEncoder, interpolate_positions, read_blip, read_encoder, reading

__all__ = ["compose_meter", "compose_blip", "load_encoder_weights", "import_meter", "import_blip"]


def import_meter(vision: str | Path, text: str | Path, *, data: str, fusion_layers: int = 2,
                 image_size: int | None = None, max_text_len: int = 40, fusion_hidden: int | None = None,
                 fusion_heads: int | None = None, pool_product: bool = False, seed: int = 0) -> MeterModel:
    """`trimkit import --vision DIR --text DIR --data D`: the answer set and (without a vocab.txt) the
    word-level vocabulary come from the data's training questions."""
    from ..data import task_vocabulary

    v, t = read_encoder(vision), read_encoder(text)
    labels, texts = task_vocabulary(data)
    model = compose_meter(v, t, labels=labels, texts=texts, fusion_layers=fusion_layers, image_size=image_size,
                          max_text_len=max_text_len, fusion_hidden=fusion_hidden, fusion_heads=fusion_heads,
                          pool_product=pool_product, seed=seed)
    model.meta = _meta(model, v, t, data, seed)
    return model


def import_blip(source: str | Path, *, data: str, image_size: int | None = None, max_text_len: int = 40,
                pool_product: bool = False, seed: int = 0) -> MeterModel:
    """`trimkit import BLIP_DIR --data D`: BLIP's encoders, a new classifier over the data's answers."""
    from ..data import task_vocabulary

    v, t = read_blip(source)
    labels, texts = task_vocabulary(data)
    model = compose_blip(v, t, labels=labels, texts=texts, image_size=image_size, max_text_len=max_text_len,
                         pool_product=pool_product, seed=seed)
    model.meta = _meta(model, v, t, data, seed)
    model.meta["imported"]["blip"] = {"path": str(source), "architecture": v.config.get("architectures")}
    return model


def _meta(model: MeterModel, vision: HFEncoder, text: HFEncoder, data: str, seed: int) -> dict[str, Any]:
    """What an imported checkpoint records about its sources."""
    return {"imported": {"vision": {"path": str(vision.path), "family": vision.family},
                         "text": {"path": str(text.path), "family": text.family,
                                  "tokenizer": model.tokenizer.to_dict()["type"]},
                         "fusion_layers": model.config.fusion_layers},
            "data": data, "seed": seed}


def compose_meter(vision: HFEncoder, text: HFEncoder, *, labels: list[str], texts: list[str],
                  fusion_layers: int = 2, image_size: int | None = None, max_text_len: int = 40,
                  fusion_hidden: int | None = None, fusion_heads: int | None = None, pool_product: bool = False,
                  trim: TrimConfig | None = None, seed: int = 0) -> MeterModel:
    """The composed model. `texts` (the training questions) build a word-level tokenizer when the text
    encoder has no `vocab.txt`; `labels` is the answer set; `pool_product`: see `ModelConfig`."""
    if vision.modality != VISION:
        raise BadInputError(f"{vision.path}: a {vision.family} model is not an image encoder")
    if text.modality != TEXT:
        raise BadInputError(f"{text.path}: a {text.family} model is not a text encoder")
    d = fusion_hidden or vision.spec.hidden_size
    heads = fusion_heads or vision.spec.num_heads
    if d % heads:
        raise BadInputError(f"fusion width {d} is not divisible by {heads} heads")
    return _compose(vision, text, labels, texts, image_size, max_text_len, trim, seed, dict(
        hidden_size=d, num_heads=heads, intermediate_size=4 * d,
        encoder_layers=max(vision.spec.layers, text.spec.layers), fusion_layers=fusion_layers,
        text_encoder=text.spec, pool_product=pool_product))


def compose_blip(vision: HFEncoder, text: HFEncoder, *, labels: list[str], texts: list[str],
                 image_size: int | None = None, max_text_len: int = 40, pool_product: bool = False,
                 trim: TrimConfig | None = None, seed: int = 0) -> MeterModel:
    """BLIP as a trimkit model: the ViT image encoder runs first (the text stream idles), then BLIP's text
    encoder runs as text-only fusion layers (self-attn, cross-attn to the image tokens, FFN; post-LN).
    A new classifier over `labels` reads both [CLS] states."""
    t = text.spec
    return _compose(vision, text, labels, texts, image_size, max_text_len, trim, seed, dict(
        hidden_size=t.hidden_size, num_heads=t.num_heads, intermediate_size=t.intermediate_size,
        encoder_layers=vision.spec.layers, fusion_layers=t.layers, layer_norm_eps=t.layer_norm_eps,
        text_encoder=dataclasses.replace(t, layers=0), fusion_style="text", fusion_norm="post",
        pool_product=pool_product),
        text_layers_into="text_fusion")


def _compose(vision: HFEncoder, text: HFEncoder, labels: list[str], texts: list[str], image_size: int | None,
             max_text_len: int, trim: TrimConfig | None, seed: int, sizes: dict[str, Any],
             text_layers_into: str | None = None) -> MeterModel:
    """Check the input sizes, build the model (`sizes`: the composition's ModelConfig fields), load both
    encoders' weights, attach labels and tokenizer."""
    size = image_size or vision.image_size
    if size % vision.patch_size:
        raise BadInputError(f"--image-size {size} is not a multiple of the encoder's patch size {vision.patch_size}")
    n_pos = text.embed["text_pos"].shape[0]
    if not 3 <= max_text_len <= n_pos:
        raise BadInputError(f"--max-text-len {max_text_len} must be in 3..{n_pos} (the encoder's positions)")
    tokenizer = _tokenizer(text, texts, max_text_len)
    try:
        config = ModelConfig(vocab_size=len(tokenizer), max_text_len=max_text_len, image_size=size,
                             patch_size=vision.patch_size, stem="patch", num_labels=len(labels),
                             vision_encoder=vision.spec, **sizes)
    except ValueError as e:  # e.g. encoders of different widths without fusion layers
        raise BadInputError(str(e)) from None
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(config, trim)
    load_encoder_weights(model, vision)
    load_encoder_weights(model, text, layers_into=text_layers_into)
    model.labels = list(labels)
    model.tokenizer = tokenizer
    return model.eval()


def _tokenizer(text: HFEncoder, texts: list[str], max_text_len: int) -> Any:
    """The text encoder's WordPiece vocabulary, or a word-level one built from the data's questions."""
    with reading(text.path):
        return _tokenizer_of(text, texts, max_text_len)


def _tokenizer_of(text: HFEncoder, texts: list[str], max_text_len: int) -> Any:
    encoder_vocab = text.embed["word"].shape[0]
    if text.vocab_file is not None:
        words = text.vocab_file.read_text(encoding="utf-8").splitlines()
        added = text.path / "added_tokens.json"  # e.g. BLIP's [DEC], [ENC] after the BERT vocabulary
        extra = json.loads(added.read_text()) if added.is_file() else {}
        words += [f"[unused-{i}]" for i in range(len(words), encoder_vocab)]
        for tok, i in extra.items():
            if 0 <= int(i) < len(words):
                words[int(i)] = tok
        if len(words) != encoder_vocab:
            raise BadInputError(f"{text.vocab_file}: {len(words)} words, but the encoder embeds {encoder_vocab}")
        return WordPieceTokenizer(words, max_text_len, lowercase=text.lowercase, strip_accents=text.strip_accents)
    tokenizer = WordTokenizer.build(texts, max_len=max_text_len)  # its ids must index the embedding table
    if len(tokenizer) > encoder_vocab:
        raise BadInputError(f"{text.path}: no vocab.txt, and the data's {len(tokenizer)} words do not fit the "
                            f"encoder's vocabulary of {encoder_vocab}")
    return tokenizer


def _copy(layer: dict[str, Tensor], pairs: list[tuple[str, str]]) -> dict[str, Tensor]:
    """trimkit name <- canonical part, for the weight and the bias of each pair."""
    return {f"{dst}.{w}": layer[f"{src}.{w}"] for dst, src in pairs for w in ("weight", "bias")}


def _attention(layer: dict[str, Tensor], dst: str, q: str, k: str, v: str, o: str) -> dict[str, Tensor]:
    out = _copy(layer, [(f"{dst}.q_proj", q), (f"{dst}.out_proj", o)])
    for w in ("weight", "bias"):  # trimkit projects keys and values with one matmul
        out[f"{dst}.kv_proj.{w}"] = torch.cat([layer[f"{k}.{w}"], layer[f"{v}.{w}"]], dim=0)
    return out


def _fusion_layer_state(layer: dict[str, Tensor]) -> dict[str, Tensor]:
    """A BLIP text layer (post-LN: self-attn, cross-attn, FFN) as a trimkit FusionBlock."""
    return (_copy(layer, [("norm1", "norm1"), ("norm2", "cnorm"), ("norm3", "norm2"), ("mlp.fc1", "fc1"),
                          ("mlp.fc2", "fc2")])
            | _attention(layer, "self_attn", "q", "k", "v", "o") | _attention(layer, "cross_attn", "cq", "ck", "cv", "co"))


def _layer_state(layer: dict[str, Tensor]) -> dict[str, Tensor]:
    out = (_copy(layer, [("norm1", "norm1"), ("norm2", "norm2"), ("mlp.fc1", "fc1"), ("mlp.fc2", "fc2")])
           | _attention(layer, "attn", "q", "k", "v", "o"))
    if "ls1" in layer:
        out["ls1"], out["ls2"] = layer["ls1"], layer["ls2"]
    return out


def _fold_normalization(weight: Tensor, bias: Tensor, mean: list[float] | None,
                        std: list[float] | None) -> tuple[Tensor, Tensor]:
    """trimkit feeds pixels in [-1, 1]; an encoder trained on (p/255 - mean)/std sees
    x/(2 std) + (0.5 - mean)/std. The patch projection is linear and unpadded, so fold that in exactly."""
    if mean is None:
        return weight, bias
    m = torch.tensor(mean, dtype=weight.dtype)
    s = torch.tensor(std, dtype=weight.dtype)
    w = weight / (2 * s)[None, :, None, None]
    b = bias + (weight * ((0.5 - m) / s)[None, :, None, None]).sum(dim=(1, 2, 3))
    return w, b


@torch.no_grad()
def load_encoder_weights(model: MeterModel, enc: HFEncoder, *, layers_into: str | None = None) -> None:
    """Copy a pretrained encoder's weights into `model` (shapes checked: the model was built from its spec).
    `layers_into="text_fusion"`: the layers are BLIP text layers with cross-attention."""
    c = model.config
    e = enc.embed
    state: dict[str, Tensor] = {}
    if enc.modality == TEXT:
        layers_name = "text_layers"
        state["token_embed.weight"] = e["word"][: c.vocab_size]
        pos = e["text_pos"][: c.max_text_len]
        if "token_type" in e:  # every token is segment 0: a constant, folded into the positions
            pos = pos + e["token_type"][0]
        state["text_pos"] = pos[None]
        state["text_embed_norm.weight"], state["text_embed_norm.bias"] = e["embed_norm.weight"], e["embed_norm.bias"]
    else:
        layers_name = "vision_layers"
        state["vision_cls"] = e["cls"].reshape(1, 1, -1)
        state["vision_pos"] = interpolate_positions(e["vision_pos"].reshape(1, -1, e["cls"].shape[-1]),
                                                    c.image_size // c.patch_size)
        state["patch_embed.weight"], state["patch_embed.bias"] = _fold_normalization(
            e["patch.weight"], e["patch.bias"], enc.pixel_mean, enc.pixel_std)
        state["vision_final_norm.weight"], state["vision_final_norm.bias"] = (e["final_norm.weight"],
                                                                             e["final_norm.bias"])
    to_state = _fusion_layer_state if layers_into == "text_fusion" else _layer_state
    for i, layer in enumerate(enc.layers):
        for k, v in to_state(layer).items():
            state[f"{layers_into or layers_name}.{i}.{k}"] = v
    own = model.state_dict()
    for k, v in state.items():
        if k not in own:
            raise BadInputError(f"{enc.path}: no place for {k} in the model")
        if own[k].shape != v.shape:
            raise BadInputError(f"{enc.path}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
        own[k].copy_(v.to(own[k].dtype))
