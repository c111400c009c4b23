"""SmartTrim trimmers: pure tensor functions plus thin modules (docs/design.md §2).

Nothing here imports a model. The training path (`mask` mode: hard Gumbel-sigmoid with
straight-through gradients) and the inference path (`prune` mode and the ONNX export:
deterministic threshold -> per-sample keep count -> TopK -> sort -> Gather, or a compaction) share the
scoring code (`TokenTrimmer.forward`, `HeadTrimmer.forward`) and the helpers below.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TokenTrimmer",
    "HeadTrimmer",
    "DepthHeadTrimmers",
    "Idle",
    "gumbel_sigmoid_st",
    "token_gate",
    "head_gate",
    "force_one_head",
    "keep_cls",
    "margin_terms",
    "Decisions",
    "select_topk_sorted",
    "select_compact",
    "gather_tokens",
    "static_count",
    "select_static",
    "BatchNoise",
]


class BatchNoise:
    """Uniform noise for the Gumbel draws, a function of (seed, sample position in the global batch).

    Every draw is made for the whole global batch from a generator seeded once per step, and
    this process takes its rows [offset, offset + local batch). So a sample sees the same noise
    whether it is trained in one process or in one shard of a DistributedDataParallel batch,
    and a resumed run draws what the uninterrupted one drew.
    """

    def __init__(self, seed: int, global_batch: int, offset: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.global_batch = global_batch
        self.offset = offset

    def __call__(self, shape: torch.Size | tuple[int, ...]) -> Tensor:
        u = torch.rand((self.global_batch, *shape[1:]), generator=self.gen)  # (B_global, ...)
        return u[self.offset: self.offset + shape[0]]


# ----------------------------------------------------------------------------- masks


def gumbel_sigmoid_st(logits: Tensor, tau: float = 1.0, uniform: Tensor | None = None) -> Tensor:
    """Hard Gumbel-sigmoid sample with a straight-through gradient.

    Forward: exactly 0.0 or 1.0 (keep where logits + logistic noise > 0).
    Backward: the gradient of sigmoid((logits + noise) / tau).
    `uniform` (same shape as logits, in (0, 1)) supplies the randomness; default torch.rand_like.
    """
    u = torch.rand_like(logits) if uniform is None else uniform.to(logits)
    u = u.clamp(1e-6, 1.0 - 1e-6)
    noise = torch.log(u) - torch.log1p(-u)  # Logistic(0, 1) = difference of two Gumbels
    soft = torch.sigmoid((logits + noise) / tau)
    hard = (soft > 0.5).to(logits.dtype)
    return hard + (soft - soft.detach())


def token_gate(logits: Tensor, *, training: bool, tau: float, threshold: float,
               uniform: Tensor | None = None) -> Tensor:
    """Per-token keep gate (B, N) in {0, 1}; [CLS] (position 0) is always kept.

    training: stochastic hard Gumbel-sigmoid with straight-through gradient;
    otherwise: deterministic `logits > threshold`.
    """
    if training:
        gate = gumbel_sigmoid_st(logits, tau, uniform)
    else:
        gate = (logits > threshold).to(logits.dtype)
    return keep_cls(gate)


def keep_cls(gate: Tensor) -> Tensor:
    """gate (B, N) with position 0 ([CLS]) set to 1: Slice + Pad in a graph (no shape arithmetic)."""
    return F.pad(gate[:, 1:], (1, 0), value=1.0)


def force_one_head(gate: Tensor, logits: Tensor) -> Tensor:
    """At least one head kept: the highest-logit head is forced to 1 (gradient of `gate` kept)."""
    top = F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(gate.dtype)  # (B, H)
    return gate + (top * (1.0 - gate)).detach()


def head_gate(logits: Tensor, *, training: bool, tau: float, threshold: float,
              uniform: Tensor | None = None) -> Tensor:
    """Per-head keep gate (B, H) in {0, 1}, at least one head kept."""
    if training:
        return force_one_head(gumbel_sigmoid_st(logits, tau, uniform), logits)
    # inference: keep where the logit passes the threshold or is the highest one (5 graph nodes, not 11;
    # differs from the arg-max one-hot only if several heads tie exactly at the maximum: all of them stay)
    top = logits >= logits.amax(dim=-1, keepdim=True)
    return ((logits > threshold) | top).to(logits.dtype)


class Decisions(NamedTuple):
    """One trimmer call's gate decisions, all (B, N): `distance` = logits - threshold (signed), `decides` (bool)
    whether the decision matters (a token alive entering the layer other than [CLS]; every head), `scale`
    (detached) the sum of the absolute values of the terms the logit adds up (`TokenTrimmer.scored`):
    rounding errors in the trimmer's inputs move the logit in proportion to it. `trim_index`, `kind`
    ("tokens" | "heads") and `modality` name the trimmer that made them (set where the forward pass records it)."""

    distance: Tensor
    decides: Tensor
    scale: Tensor
    trim_index: int
    kind: str
    modality: int


def margin_terms(decisions: list[Decisions], margin: float, relative: float = 0.0) -> tuple[Tensor, Tensor]:
    """Decision-margin hinge relu(1 - |distance| / max(margin, relative * scale)) over the deciding gate
    decisions -> (sum, count).

    Zero for decisions far enough from the threshold (at least `margin` logits, and at least `relative` of
    their own scale); its gradient pushes the rest away from it, each in the direction it already leans.
    Decisions closer than that are the ones quantization noise (int8, fp16) flips: an absolute margin covers
    logits of a few units, the relative one the bilinear global scores that grow with the hidden states.
    """
    total = count = None
    for d in decisions:
        w = d.decides.to(torch.float32)
        width = d.scale.float().mul(relative).clamp_min(margin) if relative > 0 else margin
        s, n = (torch.relu(1.0 - d.distance.float().abs() / width) * w).sum(), w.sum()
        total, count = (s, n) if total is None else (total + s, count + n)
    return total, count


# ----------------------------------------------------------------------------- pruning


def select_topk_sorted(keep: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """Batch-invariant selection: per-sample keep counts -> k = max -> TopK(k) -> sort by position.

    keep: (B, N) bool, or float in {0, 1} (then `alive` comes back as float weights, with no casts in
    the graph); scores: (B, N) float. Returns `idx` (B, k) int64 positions in ascending order and
    `alive` (B, k): false/0 marks the k - k_b filler slots of samples that keep fewer than the batch
    maximum. Fillers are real (pruned) positions; callers mask them as attention keys and keep them
    pruned, so each sample's result equals its batch-of-one result.
    """
    n = keep.shape[1]
    kept = keep if keep.dtype == torch.bool else keep > 0
    k = keep.sum(dim=1).max().to(torch.int64).item()  # data-dependent: TopK's K in the exported graph
    torch._check(k >= 1)
    torch._check(k <= n)
    ranked = torch.where(kept, scores, float("-inf"))  # (B, N); a scalar, not a full_like tensor
    _, idx = torch.topk(ranked, k, dim=1)  # (B, k): kept positions first, then fillers
    idx, _ = torch.topk(idx, k, dim=1, largest=False)  # sort (B, k) ascending; [CLS] stays at slot 0
    alive = torch.gather(keep, 1, idx)  # (B, k)
    return idx, alive


def select_compact(keep: Tensor) -> tuple[Tensor, Tensor]:
    """Order-preserving compaction for packed rows, with no TopK and no sort.

    keep: (B, N) float in {0, 1}. Returns `slots` (T,) int64, the flat positions b * N + i of the kept tokens
    in ascending order (sample-major, each sample's in position order), and `alive` (B, k), the weights of
    the new grid, k = the batch's largest keep count: sample b's kept tokens take its slots 0 .. k_b - 1 and
    fillers the rest, so a sample meets its keys in the same order in any batch.
    """
    # (B, 1) exact: sums of 1.0s; integer once, not per use; a column, so the comparison below needs no Unsqueeze
    count = keep.sum(dim=1, keepdim=True).to(torch.int64)
    k = count.max().item()  # data-dependent: the new grid's width in the exported graph
    torch._check(k >= 1)
    torch._check(k <= keep.shape[1])
    alive = (torch.arange(k, device=keep.device) < count).to(keep.dtype)  # (B, k)
    return torch.nonzero(keep.reshape(-1) > 0).squeeze(1), alive


def static_count(n: int, ratio: float) -> int:
    """k = ceil(ratio * n) in integer arithmetic (per-mille), clamped to [2, n]; shape-only for export.

    At least [CLS] and one other token stay: a k of 1 would let torch.export specialise the
    symbolic length to the constant 1 (size-1 broadcasting), and the graph would then be wrong
    for longer texts.
    """
    milli = int(round(ratio * 1000))
    return torch.sym_min(n, torch.sym_max(2, (milli * n + 999) // 1000))  # symbolic in n under torch.export


def select_static(keep: Tensor, scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Static selection: the k highest-scoring live positions (k from shapes only), sorted by position.

    Returns idx (B, k) and alive (B, k); slots beyond a sample's live tokens are dead fillers.
    """
    ranked = torch.where(keep, scores, torch.full_like(scores, float("-inf")))  # (B, N)
    ranked = torch.cat([torch.full_like(ranked[:, :1], float("inf")), ranked[:, 1:]], dim=1)  # [CLS] first
    _, idx = torch.topk(ranked, k, dim=1)  # (B, k)
    idx, _ = torch.sort(idx, dim=1)
    return idx, torch.gather(keep, 1, idx)


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """x: (B, N, D), idx: (B, k) -> (B, k, D)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# ----------------------------------------------------------------------------- modules


class TokenTrimmer(nn.Module):
    """XModal-aware token trimmer: logit s_i = MLP(LN(x_i)) + (P x_i) . (G [c_m ; c_m']) / sqrt(d_p).

    Stable initialization: the local MLP's last weights are zero and its bias is `init_keep_logit`;
    G is zero, so every logit equals `init_keep_logit` at step 0 and everything is kept.
    """

    def __init__(
        self,
        dim: int,
        *,
        hidden_ratio: int = 4,
        proj_ratio: int = 16,
        local_only: bool = False,
        init_keep_logit: float = 5.0,
        eps: float = 1e-6,
        other_dim: int | None = None,
    ) -> None:
        super().__init__()
        other_dim = dim if other_dim is None else other_dim  # the other stream's [CLS] width
        hidden = max(1, dim // hidden_ratio)
        self.proj_dim = max(1, dim // proj_ratio)
        self.local_only = local_only
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        if not local_only:  # the ablation has no global branch at all
            self.proj = nn.Linear(dim, self.proj_dim, bias=False)  # P
            self.cls_proj = nn.Linear(dim + other_dim, self.proj_dim, bias=False)  # G
        self.reset_stable(init_keep_logit)

    @torch.no_grad()
    def reset_stable(self, init_keep_logit: float) -> None:
        self.fc2.weight.zero_()
        self.fc2.bias.fill_(init_keep_logit)
        if not self.local_only:
            self.cls_proj.weight.zero_()

    def forward(self, x: Tensor, cls_self: Tensor, cls_other: Tensor, sample: Tensor | None = None) -> Tensor:
        """x: (B, N, D); cls_self: (B, D), cls_other: (B, D') -> logits (B, N).
        Packed rows: x (T, D) and `sample` (T,) int64, the sample of each row -> logits (T,)."""
        local = self.fc2(F.gelu(self.fc1(self.norm(x))))  # (B, N, 1) or (T, 1)
        if self.local_only:
            return local.squeeze(-1)
        return (local + self._global(x, cls_self, cls_other, sample)).squeeze(-1)  # (B, N) or (T,)

    def _global(self, x: Tensor, cls_self: Tensor, cls_other: Tensor, sample: Tensor | None) -> Tensor:
        g = self._cls_vector(cls_self, cls_other)  # (B, d_p)
        if sample is None:
            return self.proj(x) @ g.unsqueeze(-1)  # (B, N, d_p) @ (B, d_p, 1) -> (B, N, 1); a MatMul, not an Einsum
        return (self.proj(x) * g.index_select(0, sample)).sum(dim=-1, keepdim=True)  # (T, d_p) . (T, d_p) -> (T, 1)

    def _cls_vector(self, cls_self: Tensor, cls_other: Tensor) -> Tensor:
        # 1/sqrt(d_p) scales the weight, not the activation: a constant ONNX Runtime folds away
        return F.linear(torch.cat([cls_self, cls_other], dim=-1), self.cls_proj.weight / math.sqrt(self.proj_dim))

    def scored(self, x: Tensor, cls_self: Tensor, cls_other: Tensor,
               sample: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(logits, scale), (B, N) each ((T,) for packed rows with `sample`, as in `forward`): the logits `forward` computes and, detached, the sum of the absolute
        values of the terms its two final dot products add up (fc2's and (P x) . g's, biases included).
        Rounding errors in the inputs move a logit in proportion to that sum, not to the logit, which
        can be a small difference of large terms."""
        h = F.gelu(self.fc1(self.norm(x)))
        logits = self.fc2(h)  # (B, N, 1)
        scale = h.detach().abs() @ self.fc2.weight.detach().abs().t() + self.fc2.bias.detach().abs()
        if not self.local_only:
            g, p = self._cls_vector(cls_self, cls_other), self.proj(x)
            if sample is None:
                logits = logits + p @ g.unsqueeze(-1)
                scale = scale + p.detach().abs() @ g.detach().abs().unsqueeze(-1)
            else:
                g = g.index_select(0, sample)  # (T, d_p)
                logits = logits + (p * g).sum(dim=-1, keepdim=True)
                scale = scale + (p.detach().abs() * g.detach().abs()).sum(dim=-1, keepdim=True)
        return logits.squeeze(-1), scale.squeeze(-1)


class HeadTrimmer(nn.Module):
    """Modal-adaptive head trimmer: h = W_h [c_m ; c_m'] + b_h, one logit per head."""

    def __init__(self, dim: int, num_heads: int, *, init_keep_logit: float = 5.0,
                 other_dim: int | None = None) -> None:
        super().__init__()
        self.fc = nn.Linear(dim + (dim if other_dim is None else other_dim), num_heads)
        self.reset_stable(init_keep_logit)

    @torch.no_grad()
    def reset_stable(self, init_keep_logit: float) -> None:
        self.fc.weight.zero_()
        self.fc.bias.fill_(init_keep_logit)

    def forward(self, cls_self: Tensor, cls_other: Tensor) -> Tensor:
        """cls_self: (B, D), cls_other: (B, D') -> logits (B, H)."""
        return self.fc(torch.cat([cls_self, cls_other], dim=-1))

    def scored(self, cls_self: Tensor, cls_other: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, scale), (B, H) each: the logits and, detached, the sum of the absolute values of their terms."""
        return self(cls_self, cls_other), self.scale(cls_self, cls_other)

    def scale(self, cls_self: Tensor, cls_other: Tensor) -> Tensor:
        """(B, H) detached: the sum of the absolute values of each logit's terms (`scored`)."""
        c = torch.cat([cls_self, cls_other], dim=-1).detach()
        return c.abs() @ self.fc.weight.detach().abs().t() + self.fc.bias.detach().abs()


class DepthHeadTrimmers(nn.ModuleList):
    """The head trimmers of one trimmed depth (`ModelConfig.attention_modules` order; `Idle` where a module has
    none). Calling it gives every module's deterministic logits and gates at once."""

    def forward(self, cls: list[Tensor], streams: list[int],
                threshold: float) -> dict[int, tuple[Tensor, Tensor, Tensor | None]]:
        """cls: [CLS] of each stream, (B, D_m) in stream order; streams: the stream each module reads ->
        {module: (logits, gate, column)}: (B, H) each (`head_gate`, inference), and the gate as (B, H, 1, 1) where
        several modules share the computation (`HeadChoice.column`; None for a module alone).

        Modules with the same head count share one projection of [CLS_0 ; CLS_1] (a stream-1 trimmer's weight
        columns swapped to that order: a constant the runtime folds) and one gate computation on their
        (B, modules, H) logits: a fusion depth's 4 trimmers take 12 graph nodes where one by one they take 26.
        Each logit is the dot product its own trimmer computes, up to the order of its additions."""
        groups: dict[int, list[tuple[int, Tensor, Tensor]]] = {}
        for j, (trimmer, m) in enumerate(zip(self, streams)):
            if isinstance(trimmer, Idle):
                continue
            w, d = trimmer.fc.weight, cls[m].shape[-1]  # columns: [own stream's CLS | the other's]
            w = w if m == 0 else torch.cat([w[:, d:], w[:, :d]], dim=1)
            groups.setdefault(w.shape[0], []).append((j, w, trimmer.fc.bias))
        c = torch.cat(cls, dim=-1)  # (B, D_0 + D_1)
        out = {}
        for h, members in groups.items():
            logits = F.linear(c, torch.cat([w for _, w, _ in members]), torch.cat([b for _, _, b in members]))
            if len(members) == 1:  # no (B, 1, H) view to take apart
                out[members[0][0]] = logits, head_gate(logits, training=False, tau=1.0, threshold=threshold), None
                continue
            logits = logits.view(c.shape[0], len(members), h)  # (B, M, H): the gate's max is per module
            gate = head_gate(logits, training=False, tau=1.0, threshold=threshold)
            column = gate[..., None, None]  # (B, M, H, 1, 1): one Unsqueeze for the group, not one per module
            out.update((j, (logits[:, i], gate[:, i], column[:, i])) for i, (j, _, _) in enumerate(members))
        return out


class Idle(nn.Module):
    """Placeholder where a stream runs no layer (a shorter encoder waiting for the fusion): no trimmer."""

    def forward(self, *args):  # pragma: no cover - never called
        raise RuntimeError("an idle stream has no trimmer")
