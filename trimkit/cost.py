"""Analytic FLOPs of the transformer layers from kept tokens and kept heads (DESIGN.md §2).

A FLOP is one multiply or one add (a multiply-add is 2). Counted: the q/k/v and output
projections, the attention scores (q k^T) and the weighted values (a v), and the FFN. Not
counted: layer norms, softmax, activations, embeddings (incl. a conv stem), the classifier and the trimmers
themselves (reported separately by `token_trimmer_flops` / `head_trimmer_flops`). Every function is plain arithmetic,
so it works on Python numbers and on tensors alike: with straight-through soft counts from
`mask` mode the ratio is differentiable.
"""

from __future__ import annotations

from typing import Union

from torch import Tensor

from .config import TEXT, VISION, EncoderSpec, ModelConfig

Number = Union[int, float, Tensor]
Dims = Union[ModelConfig, EncoderSpec]  # anything with hidden_size, head_dim, intermediate_size, num_heads

__all__ = [
    "attention_flops",
    "ffn_flops",
    "encoder_layer_flops",
    "fusion_stream_flops",
    "token_trimmer_flops",
    "head_trimmer_flops",
    "projection_flops",
    "depth_flops",
]


def attention_flops(n_q: Number, n_kv: Number, heads: Number, cfg: Dims, kv_dim: int | None = None) -> Number:
    """One attention module: n_q queries over n_kv keys with `heads` heads kept; keys/values are projected
    from `kv_dim`-wide states (default: the module's width)."""
    d, dh = cfg.hidden_size, cfg.head_dim
    width = heads * dh  # kept projection width
    q_proj = 2 * n_q * d * width
    kv_proj = 2 * 2 * n_kv * (d if kv_dim is None else kv_dim) * width
    scores = 2 * n_q * n_kv * width  # q k^T
    values = 2 * n_q * n_kv * width  # a v
    out_proj = 2 * n_q * width * d
    return q_proj + kv_proj + scores + values + out_proj


def ffn_flops(n: Number, cfg: Dims) -> Number:
    """Two linear layers D -> F -> D on n tokens."""
    return 2 * 2 * n * cfg.hidden_size * cfg.intermediate_size


def encoder_layer_flops(n: Number, heads: Number, cfg: Dims) -> Number:
    """One encoder layer of one modality: self-attention over its n tokens + FFN."""
    return attention_flops(n, n, heads, cfg) + ffn_flops(n, cfg)


def fusion_stream_flops(
    n_self: Number, n_other: Number, heads_self: Number, heads_cross: Number, cfg: Dims,
    other_dim: int | None = None,
) -> Number:
    """One co-attention layer of one stream: self-attn, cross-attn to the other stream, FFN."""
    return (
        attention_flops(n_self, n_self, heads_self, cfg)
        + attention_flops(n_self, n_other, heads_cross, cfg, kv_dim=other_dim)
        + ffn_flops(n_self, cfg)
    )


def depth_flops(cfg: ModelConfig, depth: int, n: list[Number], heads: list[Number]) -> Number:
    """All layers at lockstep `depth`: n = [vision, text] token counts entering it, heads = kept heads per
    attention module in `ModelConfig.attention_modules` order. An idle stream costs nothing. (The fusion
    entry's projections, on the tokens before that depth's trimming: `projection_flops`.)"""
    if cfg.is_fusion(depth):
        f = cfg.fusion
        text = fusion_stream_flops(n[TEXT], n[VISION], heads[2], heads[3], f, other_dim=cfg.stream_width(depth, VISION))
        if cfg.fusion_style == "text":  # BLIP: only the text stream runs
            return text
        return fusion_stream_flops(n[VISION], n[TEXT], heads[0], heads[1], f) + text
    total: Number = 0
    for m in (VISION, TEXT):
        if cfg.active(depth, m):
            total = total + encoder_layer_flops(n[m], heads[m], cfg.encoder(m))
    return total


def token_trimmer_flops(n: Number, dim: int, other_dim: int, *, hidden_ratio: int = 4, proj_ratio: int = 16,
                        local_only: bool = False) -> Number:
    """Matmul FLOPs of one token trimmer on n tokens of width `dim` (the other stream's [CLS]: `other_dim`)."""
    hidden, dp = max(1, dim // hidden_ratio), max(1, dim // proj_ratio)
    local = 2 * n * dim * hidden + 2 * n * hidden
    glob = 0 if local_only else 2 * n * dim * dp + 2 * (dim + other_dim) * dp + 2 * n * dp
    return local + glob


def head_trimmer_flops(dim: int, other_dim: int, heads: int) -> Number:
    """Matmul FLOPs of one head trimmer: [c_m ; c_m'] -> one logit per head."""
    return 2 * (dim + other_dim) * heads


def projection_flops(cfg: ModelConfig, n: list[Number]) -> Number:
    """The METER fusion entry: encoders of another width (every encoder, with `fusion_proj_always`) are projected
    to the fusion width (n tokens each)."""
    if cfg.fusion_style != "coattn" or not cfg.fusion_layers:
        return 0
    total: Number = 0
    for m in (VISION, TEXT):
        w = cfg.encoder(m).hidden_size
        if w != cfg.hidden_size or cfg.fusion_proj_always:
            total = total + 2 * n[m] * w * cfg.hidden_size
    return total
