"""Transformer layers with per-instance token masks and head selection.

One attention implementation serves every trim mode:
- dense heads (`off`, `mask`): full projections; in `mask` mode a (B, H) gate multiplies
  each head's output (straight-through in training);
- gathered heads (`prune`, export): the kept heads' weight slices are gathered, so pruned heads
  cost nothing. Per sample (padded layout: each sample's own (B, kh) heads; filler heads of
  samples keeping fewer than the batch max are zeroed by their gate) or once for the whole batch
  (`HeadChoice.kept`, the union over the batch; each sample's gate zeroes the heads it dropped).

Token layouts: padded (B, N, D) tensors, or packed rows (T, D) of the batch's kept tokens with a
`Packing` that maps them to the (B, k) grid: token-wise work (norms, projections, MLP) runs on the
T rows, only the attention products run per sample on the padded (B, k) view -- or, for a stream with
`Packing.runs` > 1, its self-attention products on one padded view per run of samples of similar keep counts.
Keys are weighted by a (B, Nk) key weight in {0, 1}: pruned tokens and text padding are
removed from attention. The softmax is written out (no SDPA) because it must export with a
data-dependent key length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HeadChoice", "Packing", "Split", "masked_softmax", "Attention", "Mlp", "EncoderBlock", "FusionBlock", "ConvStem"]


@dataclass
class HeadChoice:
    """Which heads an attention module runs for each sample.

    gate: (B, H) keep gate in {0, 1} (dense heads), or (B, kh) alive flags of gathered heads.
    idx: None (dense heads), or (B, kh) int64 head indices (sorted) to gather per sample.
    kept: None, or (kh,) int64 head indices (sorted) gathered once for the whole batch; `gate` is then
          (B, kh): each sample's own choice among them.
    column: None, or `gate` as (B, H, 1, 1), the shape that multiplies a (B, H, N, dh) output, when it comes
          ready-made (`DepthHeadTrimmers` shapes the gates of a group of modules with equal head counts in one
          Unsqueeze, not one per module). Only for dense heads: it is `gate` itself, reshaped.
    """

    gate: Tensor | None = None
    idx: Tensor | None = None
    kept: Tensor | None = None
    column: Tensor | None = None

    def gate_column(self) -> Tensor:
        """`gate` as (B, H, 1, 1), or (B, kh, 1, 1) for gathered heads."""
        return self.gate[:, :, None, None] if self.column is None else self.column


@dataclass
class Packing:
    """Where the packed rows (T, C) of a stream sit in its padded (B, k) grid (`Packing.of` builds one).

    rows: (T,) int64 flat grid slots b * k + j of the kept tokens, ascending (sample-major);
    sample: (T,) int64 the sample of each row;
    src: (B * k,) int64 the packed row each grid slot reads: its own row where the slot is live, at a filler
         the row of the last live slot before it (slot 0, [CLS], is always live: a row of the same sample);
    weight: (B, k) key weights of the grid in {0, 1} (1 exactly at `rows`; fillers 0).
    """

    rows: Tensor
    sample: Tensor
    src: Tensor
    weight: Tensor
    runs: int = 1  # the runs this stream's self-attention products are split into (`Packing.split`)

    @classmethod
    def of(cls, weight: Tensor, runs: int = 1) -> Packing:
        """The packing of the live slots (weight > 0) of a (B, k) grid whose slot 0 is live in every sample."""
        k = weight.shape[1]
        live = torch.nonzero(weight > 0)  # (T, 2): (sample, slot), sample-major
        sample = live[:, 0]
        src = (weight.reshape(-1).cumsum(dim=0) - 1).to(torch.int64)  # live slots before each slot, minus one
        return cls(sample * k + live[:, 1], sample, src, weight, runs)

    @cached_property
    def split(self) -> Split:
        """The self-attention products in `runs` runs: the samples sorted by keep count and cut into `runs`
        contiguous runs, each padded only to its own largest count (one view pads every sample to the batch's).
        A run may be empty (the first, at batch 1): its tensors have no rows and cost a few empty kernels."""
        b, k = self.weight.shape
        # each sample's extent: one past its last live slot (its live count: a trimmed grid is live up front; a
        # stream packed untrimmed may have text padding anywhere)
        slots = torch.arange(1, k + 1, dtype=self.weight.dtype, device=self.weight.device)
        extent = (self.weight * slots).amax(dim=1)  # (B,) exact small integers
        # ascending by extent, ties by sample: unique keys make any sort deterministic (exact in float: extents
        # and batch are far below 2^12 each)
        order = torch.sort(extent * b + torch.arange(b, dtype=extent.dtype, device=extent.device)).indices  # (B,)
        ranked = extent.index_select(0, order)
        grid_src = self.src.view(b, k)
        members, src, key_bias, starts, widths = [], [], [], [], []
        offset = torch.zeros((), dtype=torch.int64, device=extent.device)  # rows of the runs before this one
        for r in range(self.runs):
            lo, hi = b * r // self.runs, b * (r + 1) // self.runs
            m = order[lo:hi]  # (B_r,)
            # the run's width: its last (largest) extent; the 1 keeps an empty run's width defined
            kr = torch.cat([ranked.new_ones(1), ranked[lo:hi]]).amax(dim=0).to(torch.int64)
            width = kr.item()
            torch._check(width >= 1)
            torch._check(width <= k)
            members.append(m)
            src.append(grid_src.index_select(0, m)[:, :width])  # (B_r, k_r)
            key_bias.append(self.key_bias.index_select(0, m)[..., :width])  # (B_r, 1, 1, k_r)
            starts.append(offset + torch.arange(hi - lo, device=extent.device) * kr)  # (B_r,) each sample's first row
            widths.append(kr.expand(hi - lo))
            offset = offset + (hi - lo) * kr
        first = torch.zeros_like(order).scatter(0, order, torch.cat(starts))  # (B,) in sample order
        width = torch.zeros_like(order).scatter(0, order, torch.cat(widths))
        slot = self.rows - self.sample * k  # (T,) each row's slot in its sample
        return Split(members, src, key_bias, first.index_select(0, self.sample) + slot, width)

    @property
    def cls_rows(self) -> Tensor:
        """(B,) int64 the row of each sample's [CLS] (grid slot 0)."""
        return self.src.view(self.weight.shape[0], -1)[:, 0]

    @cached_property
    def key_bias(self) -> Tensor:
        """(B, 1, 1, k) log of the key weights (0 live, -inf fillers): the additive attention mask, made once per
        grid for every attention module that reads these keys."""
        return torch.log(self.weight)[:, None, None, :]

    def to_grid(self, x: Tensor, *tail: int) -> Tensor:
        """(T, C) packed rows -> (B, k, C) padded view, or (B, k, *tail) (one reshape where a view of the view
        would add a second; `tail` has no -1); (T,) -> (B, k). A filler holds a copy of a live row of its own
        sample: finite, never a key (weight 0), and its query output is never read back (`to_rows`), so the result
        is exact without zero-filling (one Gather in a graph, where a zero-filled scatter costs ten). The view is
        (B, -1, *tail): the data-dependent width k stays out of the shape, so every view with the same tail
        shares one shape tensor in a graph."""
        return x.index_select(0, self.src).view(self.weight.shape[0], -1, *(tail or x.shape[1:]))

    def to_rows(self, g: Tensor) -> Tensor:
        """(B * k, C) rows of the padded view -> (T, C) packed rows."""
        return g.index_select(0, self.rows)  # (T, C)


@dataclass
class Split:
    """A packed stream's self-attention in runs of samples (`Packing.split`), per run r:

    members[r]: (B_r,) int64 its samples; src[r]: (B_r, k_r) int64 the packed row each slot of its padded view
    reads (fillers: a live row of the same sample, as in `Packing.src`); key_bias[r]: (B_r, 1, 1, k_r) 0 live,
    -inf fillers. back: (T,) int64 where each packed row sits in the runs' concatenated (sum_r B_r * k_r) rows;
    width: (B,) int64 the width of each sample's run (what its attention products run at).
    """

    members: list[Tensor]
    src: list[Tensor]
    key_bias: list[Tensor]
    back: Tensor
    width: Tensor


def _grid(x: Tensor, pack: Packing | None, *tail: int) -> Tensor:
    """Rows (T, C) of a packed stream, or a padded (B, N, C) tensor -> (B, N, *tail)."""
    return x.view(*x.shape[:2], *tail) if pack is None else pack.to_grid(x, *tail)


def _parts(x: Tensor, n: int) -> tuple[Tensor, ...]:
    """x[0], ..., x[n - 1]: one Gather each in a graph, where `unbind` exports as a Slice and a Squeeze each."""
    return tuple(x[i] for i in range(n))


def masked_softmax(scores: Tensor, key_weight: Tensor) -> Tensor:
    """Softmax over the last axis where keys with weight 0 are excluded.

    scores: (B, H, Nq, Nk); key_weight: (B, 1, 1, Nk) in {0, 1}. Written as
    exp(s - max) * w / sum(exp(s - max) * w) so that a straight-through key weight receives a
    gradient (a pruned token learns what it would have added). The max is over kept keys, so
    kept keys cannot underflow all at once; at least one key ([CLS]) is always kept.
    """
    if not (torch.is_grad_enabled() and key_weight.requires_grad):
        # No gradient wanted for the weights (inference, export, backbone training): the same function
        # as softmax(scores + log w) with log 0 = -inf -- 3 graph nodes instead of 10 in an ONNX export.
        return torch.softmax(scores + torch.log(key_weight), dim=-1)
    kept = key_weight > 0
    peak = scores.masked_fill(~kept, float("-inf")).amax(dim=-1, keepdim=True).detach()
    e = torch.exp((scores - peak).clamp(max=0.0)) * key_weight  # (B, H, Nq, Nk)
    return e / e.sum(dim=-1, keepdim=True)


class Attention(nn.Module):
    """Multi-head attention of queries x over keys/values y (y is x for self-attention)."""

    def __init__(self, dim: int, num_heads: int, *, dropout: float = 0.0, kv_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(dim if kv_dim is None else kv_dim, 2 * dim)  # keys/values from kv_dim-wide y
        self.out_proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, y: Tensor, key_weight: Tensor, heads: HeadChoice | None = None,
                x_pack: Packing | None = None, y_pack: Packing | None = None) -> Tensor:
        """x: (B, Nq, D) or packed (Tq, D) with `x_pack`; y: (B, Nk, Dk) or packed (Tk, Dk) with `y_pack`;
        key_weight: (B, Nk) (the grid's weights when y is packed) -> the shape of x."""
        if x_pack is not None or y_pack is not None or (heads is not None and heads.kept is not None):
            if heads is not None and heads.idx is not None:
                raise ValueError("packed tokens need dense heads or heads gathered for the whole batch (HeadChoice.kept)")
            return self.drop(self._forward_shared(x, y, key_weight, heads, x_pack, y_pack))
        if heads is not None and heads.idx is not None:
            q, k, v = self._project_gathered(x, y, heads.idx)
        else:
            q, k, v = self._project_dense(x, y)
        scores = (q @ k.transpose(-1, -2)) * self.scale  # (B, h, Nq, Nk)
        attn = masked_softmax(scores, key_weight[:, None, None, :].to(scores.dtype))
        ctx = attn @ v  # (B, h, Nq, dh)
        if heads is not None and heads.gate is not None:
            ctx = ctx * heads.gate_column().to(ctx.dtype)  # pruned / filler heads -> 0
        if heads is not None and heads.idx is not None:
            out = self._out_gathered(ctx, heads.idx)
        else:
            b, h, _, dh = ctx.shape  # -1 for lengths: one shared shape tensor in a graph, not one per module
            out = self.out_proj(ctx.transpose(1, 2).reshape(b, -1, h * dh))  # (B, Nq, D)
        return self.drop(out)

    def _forward_shared(self, x: Tensor, y: Tensor, key_weight: Tensor, heads: HeadChoice | None,
                        x_pack: Packing | None, y_pack: Packing | None) -> Tensor:
        """One weight set for the whole batch (the kept heads' slices, or all heads): projections on the rows
        as they come (packed or padded), attention products per sample on the padded grids."""
        kept = None if heads is None else heads.kept
        h, dh = self.num_heads, self.head_dim
        d, dk = self.q_proj.weight.shape[1], self.kv_proj.weight.shape[1]  # query and key/value input widths
        if y is x and d == dk:
            # self-attention: one (T, 3*kh*dh) projection and one scatter to the grid, not two of each (the weight
            # Concat is of constants, which ONNX Runtime folds)
            w = torch.cat([self.q_proj.weight.view(1, h, dh, d), self.kv_proj.weight.view(2, h, dh, d)])  # (3, H, dh, D)
            bias = torch.cat([self.q_proj.bias.view(1, h, dh), self.kv_proj.bias.view(2, h, dh)])  # (3, H, dh)
            if kept is not None:
                w, bias = w.index_select(1, kept), bias.index_select(1, kept)  # (3, kh, dh, D), (3, kh, dh)
            qkv = F.linear(x, w.reshape(-1, d), bias.reshape(-1))
            if x_pack is not None and x_pack is y_pack and x_pack.runs > 1:
                return self._self_attention_in_runs(qkv.view(-1, 3, w.shape[1], dh), x_pack.split, heads)
            q, k, v = _parts(_grid(qkv, x_pack, 3, w.shape[1], dh).permute(2, 0, 3, 1, 4), 3)  # (B, kh, N, dh) each
        else:
            wq, bq, wkv, bkv = self.q_proj.weight, self.q_proj.bias, self.kv_proj.weight, self.kv_proj.bias
            if kept is not None:
                wq = wq.view(h, dh, d).index_select(0, kept).reshape(-1, d)  # (kh*dh, D)
                bq = bq.view(h, dh).index_select(0, kept).reshape(-1)  # (kh*dh,)
                wkv = wkv.view(2, h, dh, dk).index_select(1, kept).reshape(-1, dk)  # (2*kh*dh, Dk)
                bkv = bkv.view(2, h, dh).index_select(1, kept).reshape(-1)  # (2*kh*dh,)
            kh = wq.shape[0] // dh
            q = _grid(F.linear(x, wq, bq), x_pack, kh, dh).transpose(1, 2)  # (B, kh, Nq, dh)
            k, v = _parts(_grid(F.linear(y, wkv, bkv), y_pack, 2, kh, dh).permute(2, 0, 3, 1, 4), 2)  # (B, kh, Nk, dh)
        wo = self._out_weight(kept)
        scores = (q @ k.transpose(-1, -2)) * self.scale  # (B, kh, Nq, Nk)
        if y_pack is not None:  # inference only (packing is a prune-mode layout): the grid's shared log-weights
            attn = torch.softmax(scores + y_pack.key_bias.to(scores.dtype), dim=-1)
        else:
            attn = masked_softmax(scores, key_weight[:, None, None, :].to(scores.dtype))
        ctx = attn @ v  # (B, kh, Nq, dh)
        if heads is not None and heads.gate is not None:
            ctx = ctx * heads.gate_column().to(ctx.dtype)  # heads this sample dropped -> 0
        ctx = ctx.transpose(1, 2)  # (B, Nq, kh, dh)
        if x_pack is not None:
            ctx = x_pack.to_rows(ctx.reshape(-1, ctx.shape[2] * dh))  # (Tq, kh*dh)
        else:
            ctx = ctx.reshape(*ctx.shape[:2], -1)  # (B, Nq, kh*dh)
        return F.linear(ctx, wo, self.out_proj.bias)  # (Tq, D) or (B, Nq, D)

    def _out_weight(self, kept: Tensor | None) -> Tensor:
        """W_o, or its kept heads' columns (D, kh*dh)."""
        wo = self.out_proj.weight
        if kept is None:
            return wo
        return wo.view(-1, self.num_heads, self.head_dim).index_select(1, kept).reshape(wo.shape[0], -1)

    def _self_attention_in_runs(self, qkv: Tensor, split: Split, heads: HeadChoice | None) -> Tensor:
        """Self-attention of packed rows whose products run per run of samples (`Packing.split`): qkv (T, 3, kh,
        dh) projected rows -> (T, D)."""
        kh, dh = qkv.shape[2], self.head_dim
        gate = None if heads is None or heads.gate is None else heads.gate_column()  # (B, kh, 1, 1)
        parts = []
        for members, src, key_bias in zip(split.members, split.src, split.key_bias):
            q, k, v = _parts(qkv[src].permute(2, 0, 3, 1, 4), 3)  # (B_r, kh, k_r, dh) each
            attn = torch.softmax((q @ k.transpose(-1, -2)) * self.scale + key_bias.to(q.dtype), dim=-1)
            ctx = attn @ v  # (B_r, kh, k_r, dh)
            if gate is not None:
                ctx = ctx * gate.index_select(0, members).to(ctx.dtype)  # heads it dropped -> 0
            parts.append(ctx.transpose(1, 2).reshape(-1, kh * dh))  # (B_r * k_r, kh*dh): -1 rows, fine when empty
        ctx = torch.cat(parts).index_select(0, split.back)  # (T, kh*dh)
        return F.linear(ctx, self._out_weight(None if heads is None else heads.kept), self.out_proj.bias)

    def _project_dense(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, h, dh = x.shape[0], self.num_heads, self.head_dim
        q = self.q_proj(x).view(b, -1, h, dh).transpose(1, 2)  # (B, H, Nq, dh)
        kv = self.kv_proj(y).view(b, -1, 2, h, dh).permute(2, 0, 3, 1, 4)  # (2, B, H, Nk, dh)
        return q, kv[0], kv[1]

    def _project_gathered(self, x: Tensor, y: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Only the kept heads' slices of W_q, W_k, W_v are gathered and multiplied (batched matmuls)."""
        h, dh, d, dk = self.num_heads, self.head_dim, x.shape[-1], y.shape[-1]
        b, kh = idx.shape
        wq = self.q_proj.weight.view(h, dh, d)[idx].reshape(b, kh * dh, d)  # (B, kh*dh, D)
        bq = self.q_proj.bias.view(h, dh)[idx].reshape(b, 1, kh * dh)  # (B, 1, kh*dh)
        wkv = self.kv_proj.weight.view(2, h, dh, dk)[:, idx]  # (2, B, kh, dh, Dk)
        bkv = self.kv_proj.bias.view(2, h, dh)[:, idx]  # (2, B, kh, dh)
        wkv = wkv.permute(1, 0, 2, 3, 4).reshape(b, 2 * kh * dh, dk)  # (B, 2*kh*dh, Dk)
        bkv = bkv.permute(1, 0, 2, 3).reshape(b, 1, 2 * kh * dh)  # (B, 1, 2*kh*dh)
        q = (x @ wq.transpose(1, 2) + bq).view(b, -1, kh, dh).transpose(1, 2)  # (B, kh, Nq, dh)
        kv = (y @ wkv.transpose(1, 2) + bkv).view(b, -1, 2, kh, dh).permute(2, 0, 3, 1, 4)  # (2, B, kh, Nk, dh)
        return q, kv[0], kv[1]

    def _out_gathered(self, ctx: Tensor, idx: Tensor) -> Tensor:
        h, dh = self.num_heads, self.head_dim
        d = self.out_proj.weight.shape[0]
        b, kh = idx.shape
        wo = self.out_proj.weight.view(d, h, dh).permute(1, 2, 0)[idx].reshape(b, kh * dh, d)  # (B, kh*dh, D)
        merged = ctx.transpose(1, 2).reshape(b, -1, kh * dh)  # (B, Nq, kh*dh)
        return merged @ wo + self.out_proj.bias  # (B, Nq, D)


def quick_gelu(x: Tensor) -> Tensor:
    """CLIP's GELU approximation, x * sigmoid(1.702 x): CLIP-trained weights expect exactly this function."""
    return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, *, dropout: float = 0.0, act: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)
        self.act = quick_gelu if act == "quick_gelu" else F.gelu

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class ConvStem(nn.Sequential):
    """Early convolutions instead of a linear patch embedding (Xiao et al. 2021, "Early Convolutions Help
    Transformers See Better"): log2(patch) stride-2 3x3 convs, each followed by a per-sample GroupNorm (no
    batch statistics: batch-invariant and DDP-safe) and GELU, widening to dim/2, then a 1x1 projection to dim.
    (B, C, H, W) -> (B, dim, H/patch, W/patch), the same grid as the patch embedding."""

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        steps = patch.bit_length() - 1
        widths = [max(8, dim >> (steps - i)) for i in range(steps)]  # ..., dim/4, dim/2
        layers: list[nn.Module] = []
        c_in = in_channels
        for w in widths:
            layers += [nn.Conv2d(c_in, w, 3, stride=2, padding=1, bias=False), nn.GroupNorm(1, w), nn.GELU()]
            c_in = w
        layers.append(nn.Conv2d(c_in, dim, 1))
        super().__init__(*layers)

    def reset_parameters(self) -> None:
        """He init for the 3x3 convs (unnormalised inputs need the gain); the 1x1 projection keeps the
        transformer's small init so the patch tokens start at the scale of the other embeddings."""
        for m in list(self)[:-1]:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")


class EncoderBlock(nn.Module):
    """Transformer encoder layer of one modality: pre-LN (ViT; with `layer_scale`, DINOv2) or post-LN (BERT)."""

    def __init__(self, dim: int, num_heads: int, hidden: int, *, eps: float, dropout: float = 0.0,
                 norm: str = "pre", layer_scale: bool = False, act: str = "gelu") -> None:
        super().__init__()
        self.post_norm = norm == "post"
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden, dropout=dropout, act=act)
        if layer_scale:
            self.ls1 = nn.Parameter(torch.ones(dim))
            self.ls2 = nn.Parameter(torch.ones(dim))
        else:
            self.ls1 = self.ls2 = None

    def forward(self, x: Tensor, key_weight: Tensor, heads: HeadChoice | None = None,
                pack: Packing | None = None) -> Tensor:
        """x: (B, N, D), key_weight: (B, N) -> (B, N, D); or packed rows x: (T, D) with `pack`."""
        if self.post_norm:
            x = self.norm1(x + self.attn(x, x, key_weight, heads, pack, pack))
            return self.norm2(x + self.mlp(x))
        h = self.norm1(x)
        a = self.attn(h, h, key_weight, heads, pack, pack)
        x = x + (a if self.ls1 is None else a * self.ls1)
        f = self.mlp(self.norm2(x))
        return x + (f if self.ls2 is None else f * self.ls2)


class FusionBlock(nn.Module):
    """One stream of a fusion layer: self-attn, cross-attn to the other stream, FFN. Pre-LN (METER
    co-attention; the other stream is normalized as it enters) or post-LN (BLIP's text encoder, whose
    cross-attention reads the `other_dim`-wide image tokens as they are)."""

    def __init__(self, dim: int, num_heads: int, hidden: int, *, eps: float, dropout: float = 0.0,
                 norm: str = "pre", other_dim: int | None = None) -> None:
        super().__init__()
        self.post_norm = norm == "post"
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.self_attn = Attention(dim, num_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.norm_other = None if self.post_norm else nn.LayerNorm(dim if other_dim is None else other_dim, eps=eps)
        self.cross_attn = Attention(dim, num_heads, dropout=dropout, kv_dim=other_dim)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden, dropout=dropout)

    def forward(
        self,
        x: Tensor,
        other: Tensor,
        key_weight: Tensor,
        other_weight: Tensor,
        heads_self: HeadChoice | None = None,
        heads_cross: HeadChoice | None = None,
        pack: Packing | None = None,
        other_pack: Packing | None = None,
    ) -> Tensor:
        """x: (B, N, D) this stream; other: (B, M, D') the other stream's layer input -> (B, N, D).
        Packed rows (T, D) / (T', D') with `pack` / `other_pack`."""
        if self.post_norm:
            x = self.norm1(x + self.self_attn(x, x, key_weight, heads_self, pack, pack))
            x = self.norm2(x + self.cross_attn(x, other, other_weight, heads_cross, pack, other_pack))
            return self.norm3(x + self.mlp(x))
        h = self.norm1(x)
        x = x + self.self_attn(h, h, key_weight, heads_self, pack, pack)
        x = x + self.cross_attn(self.norm2(x), self.norm_other(other), other_weight, heads_cross, pack, other_pack)
        return x + self.mlp(self.norm3(x))
