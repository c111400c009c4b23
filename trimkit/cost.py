"""Analytic FLOPs of the transformer layers from kept tokens and kept heads (docs/design.md §2).

A FLOP is one multiply or one add (a multiply-add is 2). Counted: the q/k/v and output
projections, the attention scores (q k^T) and the weighted values (a v), and the FFN. Not
counted: layer norms, softmax, activations, embeddings (incl. a conv stem), the classifier and the trimmers
themselves (reported separately by `token_trimmer_flops` / `head_trimmer_flops`). Every function is plain arithmetic,
so it works on Python numbers and on tensors alike: with straight-through soft counts from
`mask` mode the ratio is differentiable.

Two quantities per input: *decided* FLOPs (`depth_flops` on the tokens and heads the trimmers keep
for that sample: what the method promises) and *executed* FLOPs (`executed_depth_flops`: what the
artifact runs, the sample's share of its batch's work). They differ by layout: the padded layout
runs every sample at the batch's largest keep count, the packed one runs token-wise work on each
sample's own tokens and only the attention products on the padded (B, k_max) view (or on its run's view,
`Packing.split`); and by head
pruning: masked heads still run, heads gathered for the batch run the union of its choices.
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
    "executed_depth_flops",
    "executed_ratio",
    "graph_node_counts",
]


def attention_flops(n_q: Number, n_kv: Number, heads: Number, cfg: Dims, kv_dim: int | None = None,
                    grid: tuple[Number, Number] | None = None) -> Number:
    """One attention module: n_q queries over n_kv keys with `heads` heads kept; keys/values are projected
    from `kv_dim`-wide states (default: the module's width). `grid` (queries, keys): the lengths the
    attention products run at when they differ from the projected rows (a padded view of packed rows)."""
    d, dh = cfg.hidden_size, cfg.head_dim
    width = heads * dh  # kept projection width
    gq, gkv = (n_q, n_kv) if grid is None else grid
    q_proj = 2 * n_q * d * width
    kv_proj = 2 * 2 * n_kv * (d if kv_dim is None else kv_dim) * width
    scores = 2 * gq * gkv * width  # q k^T
    values = 2 * gq * gkv * width  # a v
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
    other_dim: int | None = None, grid: tuple[Number, Number] | None = None, self_grid: Number | None = None,
) -> Number:
    """One co-attention layer of one stream: self-attn, cross-attn to the other stream, FFN
    (`grid`: attention-product lengths of this stream and the other, as in `attention_flops`; `self_grid`: this
    stream's self-attention product length where it differs from grid[0])."""
    g_self, g_cross = (None, None) if grid is None else ((grid[0], grid[0]), grid)
    if self_grid is not None:
        g_self = (self_grid, self_grid)
    return (
        attention_flops(n_self, n_self, heads_self, cfg, grid=g_self)
        + attention_flops(n_self, n_other, heads_cross, cfg, kv_dim=other_dim, grid=g_cross)
        + ffn_flops(n_self, cfg)
    )


def depth_flops(cfg: ModelConfig, depth: int, n: list[Number], heads: list[Number],
                grid: list[Number] | None = None, self_grid: list[Number] | None = None) -> Number:
    """All layers at lockstep `depth`: n = [vision, text] token counts entering it, heads = kept heads per
    attention module in `ModelConfig.attention_modules` order. An idle stream costs nothing. (The fusion
    entry's projections, on the tokens before that depth's trimming: `projection_flops`.) `grid` = [vision,
    text] lengths the attention products run at, when they differ from n (`executed_depth_flops`); `self_grid`
    the self-attention products' lengths where they differ from `grid` (runs: `Packing.split`)."""
    g = grid if grid is not None else n
    sg = self_grid if self_grid is not None else [None, None]
    if cfg.is_fusion(depth):
        f = cfg.fusion
        gv, gt = ((g[VISION], g[TEXT]), (g[TEXT], g[VISION])) if grid is not None else (None, None)
        text = fusion_stream_flops(n[TEXT], n[VISION], heads[2], heads[3], f, other_dim=cfg.stream_width(depth, VISION),
                                   grid=gt, self_grid=sg[TEXT])
        if cfg.fusion_style == "text":  # BLIP: only the text stream runs
            return text
        return fusion_stream_flops(n[VISION], n[TEXT], heads[0], heads[1], f, grid=gv, self_grid=sg[VISION]) + text
    total: Number = 0
    for m in (VISION, TEXT):
        if cfg.active(depth, m):
            spec = cfg.encoder(m)
            if grid is None:
                total = total + encoder_layer_flops(n[m], heads[m], spec)
            else:
                gm = g[m] if sg[m] is None else sg[m]
                total = total + attention_flops(n[m], n[m], heads[m], spec, grid=(gm, gm)) + ffn_flops(n[m], spec)
    return total


def executed_depth_flops(cfg: ModelConfig, depth: int, rows: list[Number], grid: list[Number],
                         heads: list[Number], self_grid: list[Number | None] | None = None) -> Number:
    """One sample's share of the work its batch executes at `depth`.

    rows = [vision, text] tokens the token-wise work (projections, FFN) runs on for this sample: its own
    kept count in the packed layout, the batch's grid width (largest keep count, or the padded text length
    before any trimming) in the padded one; grid = [vision, text] grid widths, where the attention products
    run; heads = heads each attention module projects (all of them when heads are masked, the batch's
    union when gathered for the batch, the batch's widest choice when gathered per sample); self_grid = [vision,
    text] the width of the run each sample's self-attention products run in, where a stream runs them in
    runs (None: at the grid width). Summed over a batch's samples this is the batch's executed work.
    """
    return depth_flops(cfg, depth, rows, heads, grid=grid, self_grid=self_grid)


def executed_ratio(out) -> float:
    """FLOPs a batch executed / the untrimmed model's FLOPs on the same inputs, from a `TrimOutput`
    (its `executed_layer_flops` and `full_layer_flops`): 1.0 for the full model on unpadded text, above
    `flops_ratio` (decided) by the padding and the heads that run although pruned."""
    return float(out.executed_layer_flops.sum() / out.full_layer_flops.sum())


def graph_node_counts(model) -> dict[str, int]:
    """Node count per op type of an ONNX graph (a ModelProto or a path), "total" included: each node costs a
    dispatch at run time, which dominates small inputs. Lazy onnx import."""
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return {"total": len(proto.graph.node), **dict(sorted(counts.items(), key=lambda kv: -kv[1]))}


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
