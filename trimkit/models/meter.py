"""METER-style vision-language backbone with SmartTrim trimmers (docs/design.md §2).

A ViT image encoder and a text encoder run layer by layer in lockstep, then M co-attention
fusion layers; the [CLS] states of both streams feed a classifier over the answer set.
Lockstep depth l = 0 .. encoder_layers + fusion_layers - 1; trimmers sit at every depth
l >= first_trimmed_layer and decide, from the layer's input, which tokens and heads the
layer runs.

Trim modes, all on the same weights:
- `off`:   the untrimmed backbone (text padding is still masked out as keys);
- `mask`:  training-style masking (hard Gumbel-sigmoid with straight-through gradients in
           training, deterministic thresholds in eval); pruned tokens stay in the tensors but
           are removed as keys, pruned heads are zeroed;
- `prune`: tokens and heads physically removed per instance, with batch-invariant filler slots; the
           path the ONNX export traces. Two token layouts (`model.layout`): "packed" (default) selects by
           an order-preserving compaction (NonZero -> Gather), runs the token-wise work after the first
           trimmed layer on the batch's kept tokens as one (sum_b k_b, D) matrix and only the attention
           products per sample on the padded (B, k_max) view (a long stream's self-attention products on
           one view per run of samples: `MeterModel.attention_runs`); "padded" selects by TopK -> sort -> Gather
           and runs everything on (B, k_max, D);
- `static`: calibrated per-layer keep ratios (`TrimConfig.static_keep_ratios`) and head counts:
           the k highest-scoring tokens/heads, k derived from input shapes only (always padded: k is
           the same for every sample, so there is no padding to remove).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from ..config import TEXT, VISION, ModelConfig, TrimConfig
from ..contract import GATHER_MAX_KEEP, HEAD_IMPLS, LAYOUTS, stream_attention_runs
from ..cost import depth_flops, executed_depth_flops, projection_flops
from ..trimmers import (
    Decisions,
    DepthHeadTrimmers,
    HeadTrimmer,
    Idle,
    TokenTrimmer,
    gather_tokens,
    head_gate,
    margin_terms,
    select_compact,
    select_static,
    select_topk_sorted,
    static_count,
    token_gate,
)
from .layers import ConvStem, EncoderBlock, FusionBlock, HeadChoice, Packing

__all__ = ["MeterModel", "TrimOutput", "TRIM_MODES", "LAYOUTS", "HEAD_IMPLS"]

TrimMode = Literal["off", "mask", "prune", "static"]
TRIM_MODES: tuple[str, ...] = ("off", "mask", "prune", "static")


@dataclass
class TrimOutput:
    """What the model returns.

    logits:           (B, num_labels)
    keep_counts:      (B, T, 2) int64, tokens kept entering each trimmed layer (vision, text)
    layer_flops:      (B, L) analytic FLOPs per lockstep layer for this instance on the tokens and heads
                      the trimmers *decided* to keep (differentiable through the straight-through masks in
                      `mask` training)
    full_layer_flops: (B, L) the same for the untrimmed model on the same input
    executed_layer_flops: (B, L) this instance's share of the FLOPs the batch *executes* in this
                      mode and layout (`cost.executed_depth_flops`): batch padding, masked heads and the
                      union of gathered heads included; text padding too, where it runs
    token_masks:      details only: per trimmed layer, ((B, Nv), (B, Nt)) keep masks over the
                      original token positions
    head_masks:       details only: per trimmed layer, list of (B, H) head keep masks, one per
                      attention module (encoder: [vision, text]; fusion: [v-self, v-cross,
                      t-self, t-cross])
    encoder_states:   details only: (vision (B, Nv, Dv), text (B, Nt, Dt)) hidden states leaving the
                      encoders (after their final norms, before the fusion); rows are the kept tokens
                      in `prune` mode
    final_states:     details only: (vision, text) hidden states after the last layer, before pooling
    pooled:           details only: (B, Dv + Dt [+ Dv]) the pooled [CLS] states the classifier reads (and
                      their product, with `pool_product`)
    """

    logits: Tensor
    keep_counts: Tensor
    layer_flops: Tensor | None  # None with forward(accounting=False), as are the two below
    full_layer_flops: Tensor | None
    executed_layer_flops: Tensor | None = None
    token_masks: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    head_masks: list[list[Tensor]] = field(default_factory=list)
    encoder_states: tuple[Tensor, Tensor] | None = None
    final_states: tuple[Tensor, Tensor] | None = None
    pooled: Tensor | None = None
    # details only (not static mode): every gate decision, per trimmer call (`trimmers.Decisions`)
    decisions: list[Decisions] = field(default_factory=list)
    # `forward(margin=M)` in mask mode: (sum, count) of the decision-margin hinge over the gated tokens and
    # heads of the batch (`trimmers.margin_terms`), the sum differentiable; None otherwise
    margin_terms: tuple[Tensor, Tensor] | None = None

    @property
    def flops_ratio(self) -> Tensor:
        """(B,) *decided* FLOPs(trimmed) / FLOPs(full) per instance: the tokens and heads the trimmers keep."""
        self._need_accounting()
        return self.layer_flops.sum(dim=1) / self.full_layer_flops.sum(dim=1)

    @property
    def executed_flops_ratio(self) -> Tensor:
        """(B,) *executed* FLOPs / FLOPs(full) per instance: its share of what the batch ran (at batch 1, what
        the artifact runs for it alone; masked heads count as run)."""
        self._need_accounting()
        return self.executed_layer_flops.sum(dim=1) / self.full_layer_flops.sum(dim=1)

    def _need_accounting(self) -> None:
        if self.full_layer_flops is None:
            raise ValueError("this output has no FLOPs accounting: the forward ran with accounting=False")

    @property
    def margin_penalty(self) -> Tensor | None:
        """Mean decision-margin hinge of the batch (None without `forward(margin=M)` in mask mode)."""
        return None if self.margin_terms is None else self.margin_terms[0] / self.margin_terms[1].clamp_min(1.0)


@dataclass
class _Stream:
    """State of one modality through the lockstep stack."""

    x: Tensor  # (B, N, D) hidden states (N shrinks in prune mode), or packed rows (T, D) with `pack`
    weight: Tensor  # (B, N) key weight / keep mask in {0, 1} (straight-through in mask training)
    pos: Tensor  # (B, N) int64 original positions of the grid's slots
    n_orig: int  # token count before any pruning
    pack: Packing | None = None  # packed layout: where the rows of x sit in the (B, N) grid
    runs: int = 1  # packed layout: the runs its self-attention products run in (`contract.attention_runs`)

    def cls(self) -> Tensor:
        """(B, D) the [CLS] states (grid slot 0: [CLS] is never pruned)."""
        return self.x[:, 0] if self.pack is None else self.x.index_select(0, self.pack.cls_rows)

    def grid(self) -> Tensor:
        """(B, N, D) hidden states on the grid (packed fillers are zeros)."""
        return self.x if self.pack is None else self.pack.to_grid(self.x) * self.pack.weight[..., None]


class MeterModel(nn.Module):
    """METER-style VLM; `forward(pixel_values, input_ids, attention_mask)` -> `TrimOutput`."""

    def __init__(self, config: ModelConfig, trim: TrimConfig | None = None) -> None:
        super().__init__()
        self.config = config
        self.trim = trim if trim is not None else TrimConfig()
        c, t = config, self.trim
        d = c.hidden_size  # fusion width
        ev, et = c.encoder(VISION), c.encoder(TEXT)
        dv, dt = ev.hidden_size, et.hidden_size
        if t.first_trimmed_layer > c.num_layers:
            raise ValueError(f"first_trimmed_layer {t.first_trimmed_layer} exceeds the depth {c.num_layers}")
        # embeddings
        self.patch_embed = ConvStem(c.num_channels, dv, c.patch_size) if c.stem == "conv" else nn.Conv2d(
            c.num_channels, dv, kernel_size=c.patch_size, stride=c.patch_size)
        self.vision_cls = nn.Parameter(torch.zeros(1, 1, dv))
        self.vision_pos = nn.Parameter(torch.zeros(1, c.num_patches + 1, dv))
        self.token_embed = nn.Embedding(c.vocab_size, dt)
        self.text_pos = nn.Parameter(torch.zeros(1, c.max_text_len, dt))
        self.vision_embed_norm = nn.LayerNorm(dv, eps=ev.layer_norm_eps) if ev.embed_norm else None
        self.text_embed_norm = nn.LayerNorm(dt, eps=et.layer_norm_eps) if et.embed_norm else None
        coattn = c.fusion_style == "coattn"
        # modality type, added at METER's fusion entry (BLIP has none)
        self.type_embed = nn.Parameter(torch.zeros(2, d)) if coattn else None
        # lockstep encoders and fusion
        blk = dict(dropout=c.dropout)
        self.vision_layers = nn.ModuleList([EncoderBlock(
            dv, ev.num_heads, ev.intermediate_size, eps=ev.layer_norm_eps, norm=ev.norm, layer_scale=ev.layer_scale,
            act=ev.activation, **blk) for _ in range(ev.layers)])
        self.text_layers = nn.ModuleList([EncoderBlock(
            dt, et.num_heads, et.intermediate_size, eps=et.layer_norm_eps, norm=et.norm, layer_scale=et.layer_scale,
            act=et.activation, **blk) for _ in range(et.layers)])
        self.vision_final_norm = nn.LayerNorm(dv, eps=ev.layer_norm_eps) if ev.final_norm else None
        self.text_final_norm = nn.LayerNorm(dt, eps=et.layer_norm_eps) if et.final_norm else None
        blk.update(eps=c.layer_norm_eps, norm=c.fusion_norm)
        self.vision_fusion = nn.ModuleList(
            [FusionBlock(d, c.num_heads, c.intermediate_size, **blk) for _ in range(c.fusion_layers if coattn else 0)])
        self.text_fusion = nn.ModuleList(
            [FusionBlock(d, c.num_heads, c.intermediate_size, other_dim=None if coattn else dv, **blk)
             for _ in range(c.fusion_layers)])
        # an encoder of another width is projected to the fusion width as it enters the co-attention (METER)
        self.fusion_proj = nn.ModuleList(
            [nn.Linear(w, d) if c.fusion_layers and coattn and (w != d or c.fusion_proj_always) else nn.Identity()
             for w in (dv, dt)])
        wv, wt = c.final_width(VISION), c.final_width(TEXT)  # widths of the final states
        self.vision_norm = nn.LayerNorm(wv, eps=c.layer_norm_eps) if c.pool_norm else nn.Identity()
        self.text_norm = nn.LayerNorm(wt, eps=c.layer_norm_eps) if c.pool_norm else nn.Identity()
        self.vision_pool = nn.Linear(wv, wv)
        self.text_pool = nn.Linear(wt, wt)
        n_in = wv + wt + (wv if c.pool_product else 0)
        self.classifier = nn.Sequential(
            nn.Linear(n_in, 2 * d),
            nn.LayerNorm(2 * d, eps=c.layer_norm_eps if c.classifier_norm_eps is None else c.classifier_norm_eps), nn.GELU(),
            nn.Linear(2 * d, c.num_labels)) if c.classifier_head == "mlp" else nn.Sequential(nn.Linear(n_in, c.num_labels))
        # trimmers, one set per trimmed depth; a stream idling at that depth gets `Idle` (no trimmer)
        tok = dict(hidden_ratio=t.score_hidden_ratio, proj_ratio=t.proj_ratio, local_only=t.local_only,
                   init_keep_logit=t.init_keep_logit, eps=c.layer_norm_eps)
        self.token_trimmers = nn.ModuleList()
        self.head_trimmers = nn.ModuleList()
        for depth in range(t.first_trimmed_layer, c.num_layers):
            w = [c.stream_width(depth, m) for m in (VISION, TEXT)]
            self.token_trimmers.append(nn.ModuleList([
                TokenTrimmer(w[m], other_dim=w[1 - m], **tok) if c.active(depth, m) and t.trims_tokens(m) else Idle()
                for m in (VISION, TEXT)]))
            self.head_trimmers.append(DepthHeadTrimmers([
                HeadTrimmer(w[m], c.layer_spec(depth, m).num_heads, init_keep_logit=t.init_keep_logit,
                            other_dim=w[1 - m]) if c.active(depth, m) else Idle()
                for m, _ in c.attention_modules(depth)]))
        # How `prune` mode drops heads: "gather" the kept heads' weight slices (saves the work: once for the
        # batch, the union of its choices, in the packed layout; per sample in the padded one), "mask" them
        # (dense projections, pruned heads zeroed), or "auto": per module, as `heads_gathered` says; and how it
        # lays out tokens: "packed" or "padded" (module docstring). Export-time choices, not weights.
        self.head_impl = "gather"
        self.layout = "packed"
        self._init_weights()

    # ------------------------------------------------------------------ init

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=0.02)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, EncoderBlock) and m.ls1 is not None:
                nn.init.ones_(m.ls1)
                nn.init.ones_(m.ls2)
        for p in (self.vision_pos, self.text_pos, self.vision_cls, self.type_embed):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        if isinstance(self.patch_embed, ConvStem):
            self.patch_embed.reset_parameters()
        self.reset_trimmers()

    def reset_trimmers(self, init_keep_logit: float | None = None) -> None:
        """Stable initialization of every trimmer: everything kept, model equals the untrimmed one."""
        logit = self.trim.init_keep_logit if init_keep_logit is None else init_keep_logit
        for m in self.modules():
            if isinstance(m, (TokenTrimmer, HeadTrimmer)):
                m.reset_stable(logit)

    def trimmer_parameters(self) -> list[nn.Parameter]:
        return [*self.token_trimmers.parameters(), *self.head_trimmers.parameters()]

    def encoder_parameters(self, modality: int) -> list[nn.Parameter]:
        """One modality's embeddings and encoder layers (with their norms): what `--freeze` holds fixed.
        Not its trimmers, not the fusion (nor the projection into it), not the classifier."""
        if modality == VISION:
            parts = [self.patch_embed, self.vision_embed_norm, self.vision_layers, self.vision_final_norm]
            own = [self.vision_cls, self.vision_pos]
        else:
            parts = [self.token_embed, self.text_embed_norm, self.text_layers, self.text_final_norm]
            own = [self.text_pos]
        return own + [p for mod in parts if mod is not None for p in mod.parameters()]

    def backbone_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.trimmer_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    # ------------------------------------------------------------------ forward

    def embed_image(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 1 + P, D)."""
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)  # (B, P, D)
        cls = self.vision_cls.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.vision_pos
        return x if self.vision_embed_norm is None else self.vision_embed_norm(x)

    def embed_text(self, input_ids: Tensor) -> Tensor:
        """(B, Nt) -> (B, Nt, D); position 0 holds [CLS]."""
        x = self.token_embed(input_ids) + self.text_pos[:, : input_ids.shape[1]]
        return x if self.text_embed_norm is None else self.text_embed_norm(x)

    def forward(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        mode: TrimMode | None = None,
        details: bool = False,
        noise: Callable[[torch.Size], Tensor] | None = None,
        image_groups: Tensor | None = None,
        margin: float = 0.0,
        relative_margin: float = 0.0,
        accounting: bool = True,
    ) -> TrimOutput:
        """pixel_values (B, 3, H, W) float, input_ids (B, Nt) int64, attention_mask (B, Nt) int64.

        mode defaults to `mask` in training and `prune` in eval. `noise(shape)` supplies the uniform
        draws of the Gumbel gates in training (default: torch.rand); see `trimmers.BatchNoise`.
        `image_groups` (B,) int64: rows with equal ids hold the same image. In `off` mode the vision
        encoder then runs once per distinct image (nothing in it depends on the question there; with
        dropout > 0 the image's questions share one dropout draw); other modes ignore it.
        `margin` > 0 in `mask` mode: the decision-margin hinge (`trimmers.margin_terms`, with `relative_margin`)
        of every gate decision (tokens alive entering the layer, [CLS] excluded; every head) comes back as
        `margin_terms` (sum, count).
        `accounting=False` skips the FLOPs bookkeeping (the three `*_flops` fields come back None): an ONNX export
        traces only what the graph computes, and tracing the bookkeeping costs a quarter of the export time.
        """
        mode = mode or ("mask" if self.training else "prune")
        if mode not in TRIM_MODES:
            raise ValueError(f"unknown trim mode {mode!r}; choose from {', '.join(TRIM_MODES)}")
        if mode in ("prune", "static") and self.training and torch.is_grad_enabled():
            raise RuntimeError(f"{mode} mode is for inference: call model.eval() or train in mask mode")
        if mode == "static" and not self.trim.static_keep_ratios:
            raise ValueError("static mode needs calibrated keep ratios (trimkit calibrate budget)")
        c, t = self.config, self.trim
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        shared = image_groups is not None and mode == "off"
        xv = self._shared_vision(pixel_values, image_groups) if shared else self.embed_image(pixel_values)
        xt = self.embed_text(input_ids)
        b = xv.shape[0]
        # [CLS] is always a key: position 0 of the text is kept whatever the mask says.
        wt = attention_mask.to(xt.dtype)
        wt = torch.cat([torch.ones_like(wt[:, :1]), wt[:, 1:]], dim=1)  # (B, Nt)
        streams = [
            _Stream(xv, torch.ones(xv.shape[:2], dtype=xv.dtype, device=xv.device),
                    torch.arange(xv.shape[1], device=xv.device).expand(b, -1), xv.shape[1]),
            _Stream(xt, wt, torch.arange(xt.shape[1], device=xt.device).expand(b, -1), xt.shape[1]),
        ]
        if mode == "prune" and self.layout == "packed":
            for s, runs in zip(streams, self.attention_runs()):
                s.runs = runs
        n_full = [torch.full((b,), float(xv.shape[1]), device=xv.device), wt.sum(dim=1).detach()]
        if mode == "prune" and self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose from {', '.join(LAYOUTS)}")
        if mode == "prune" and self.head_impl not in HEAD_IMPLS:
            raise ValueError(f"unknown head pruning {self.head_impl!r}; choose from {', '.join(HEAD_IMPLS)}")
        counts: list[Tensor] = []
        flops: list[Tensor] = []
        full_flops: list[Tensor] = []
        executed: list[Tensor] = []
        token_masks: list[tuple[Tensor, Tensor]] = []
        head_masks: list[list[Tensor]] = []
        encoder_states = None
        decisions: list[Decisions] = []  # with details or a margin
        margin = margin if mode == "mask" else 0.0
        track = (details or margin > 0) and mode != "static"

        for depth in range(c.num_layers):
            trim_index = depth - t.first_trimmed_layer
            modules = c.attention_modules(depth)
            heads: list[HeadChoice | None] = [None] * len(modules)
            entry = entry_full = entry_run = 0.0
            if depth == c.encoder_depth and self.type_embed is not None:
                # co-attention entry: project to the fusion width (counted on the tokens that reach it), add the type
                if accounting:
                    entry = projection_flops(c, [s.weight.sum(dim=1) for s in streams])
                    entry_full = projection_flops(c, n_full)
                    entry_run = projection_flops(c, [self._rows_run(s) for s in streams])
                for m, s in enumerate(streams):
                    s.x = self.fusion_proj[m](s.x) + self.type_embed[m]
            if trim_index >= 0 and mode != "off":
                heads = self.trim_layer(depth, streams, mode=mode, noise=noise,
                                        decisions=decisions if track else None)
                if details:
                    token_masks.append(tuple(self._orig_mask(s) for s in streams))
                    head_masks.append([self._head_mask(h, b, xv, c.layer_spec(depth, m).num_heads)
                                       for h, (m, _) in zip(heads, modules)])
            if trim_index >= 0:  # weights are {0, 1} (hard gates): their sum is the kept count
                counts += [s.weight.detach().sum(dim=1, keepdim=True) for s in streams]  # (B, 1) each
            if accounting:
                flops.append(self._layer_flops(depth, [s.weight.sum(dim=1) for s in streams], heads) + entry)
                full_flops.append(self._layer_flops(depth, n_full, [None] * len(modules)) + entry_full)
                executed.append(self._executed_flops(depth, streams, heads) + entry_run)
            self._run_layer(depth, streams, heads, vision_done=shared)
            if details and depth == c.encoder_depth - 1:
                encoder_states = (streams[VISION].grid(), streams[TEXT].grid())

        vis, txt = streams
        pv = torch.tanh(self.vision_pool(self.vision_norm(vis.cls())))
        pt = torch.tanh(self.text_pool(self.text_norm(txt.cls())))
        pooled = torch.cat([pv, pt, pv * pt] if c.pool_product else [pv, pt], dim=-1)  # (B, Dv + Dt [+ Dv])
        logits = self.classifier(pooled)  # (B, num_labels)
        keep_counts = (torch.cat(counts, dim=1).view(b, -1, 2) if counts  # one Concat + Reshape in a graph
                       else torch.zeros(b, 0, 2, dtype=torch.int64, device=logits.device))
        return TrimOutput(
            logits=logits,
            keep_counts=keep_counts.to(torch.int64),  # exact: sums of 1.0s
            layer_flops=torch.stack(flops, dim=1) if accounting else None,
            full_layer_flops=torch.stack(full_flops, dim=1) if accounting else None,
            executed_layer_flops=torch.stack(executed, dim=1).detach() if accounting else None,
            token_masks=token_masks,
            head_masks=head_masks,
            encoder_states=encoder_states,
            final_states=(vis.grid(), txt.grid()) if details else None,
            pooled=pooled if details else None,
            decisions=decisions if details else [],
            margin_terms=margin_terms(decisions, margin, relative_margin) if margin > 0 and decisions else None,
        )

    # ------------------------------------------------------------------ pieces

    def trim_layer(self, depth: int, streams: list[_Stream], *, mode: str, noise=None,
                   decisions: list[Decisions] | None = None) -> list[HeadChoice | None]:
        """The trimmers of one trimmed depth, on the layer's input: token selection of each stream (in place:
        `mask` multiplies the weights, `prune` gathers the kept tokens, `static` the calibrated count) and the
        heads each attention module runs, returned in `ModelConfig.attention_modules` order. `decisions`
        (a list) collects every gate decision. In the packed layout every stream leaves packed."""
        c, t = self.config, self.trim
        trim_index = depth - t.first_trimmed_layer
        modules = c.attention_modules(depth)
        heads: list[HeadChoice | None] = [None] * len(modules)
        cls = [s.cls() for s in streams]  # (B, D_m) each, layer input
        packed = mode == "prune" and self.layout == "packed"
        if t.token_trimming:
            for m, s in enumerate(streams):
                trimmer = self.token_trimmers[trim_index][m]
                if isinstance(trimmer, Idle):
                    continue
                sample = None if s.pack is None else s.pack.sample  # (T,) the sample of each row
                if decisions is not None:  # decisions on tokens alive here; [CLS] is always kept
                    logits, scale = trimmer.scored(s.x, cls[m], cls[1 - m], sample)  # (B, N) or (T,) each
                    if s.pack is not None:
                        logits, scale = s.pack.to_grid(logits), s.pack.to_grid(scale)  # (B, N) each
                    alive = s.weight.detach() > 0
                    alive[:, 0] = False
                    decisions.append(Decisions(logits - t.thresholds(trim_index)[0], alive, scale,
                                               trim_index, "tokens", m))
                else:
                    logits = trimmer(s.x, cls[m], cls[1 - m], sample)  # (B, N), or (T,) for packed rows
                    if s.pack is not None:
                        logits = s.pack.to_grid(logits)  # (B, N); fillers never kept (weight 0)
                if mode == "static":
                    self._static_tokens(s, logits, t.static_keep_ratios[trim_index][m])
                else:
                    self._trim_tokens(s, logits, mode, noise, trim_index, packed=packed)
        if packed:  # streams this depth does not trim (idle, or not token-trimmed) leave packed too
            for s in streams:
                if s.pack is None:
                    self._pack(s)
        if t.head_trimming:
            # deterministic gates (every mode but training's): every module of the depth in one projection and
            # one gate computation, the same with or without `decisions`
            merged = ({} if self.training and mode == "mask" else
                      self.head_trimmers[trim_index](cls, [m for m, _ in modules], t.thresholds(trim_index)[1]))
            for j, (m, _) in enumerate(modules):
                trimmer = self.head_trimmers[trim_index][j]
                if isinstance(trimmer, Idle):
                    continue
                logits, gate, column = merged.get(j, (None, None, None))
                if decisions is not None:
                    if logits is None:
                        logits, scale = trimmer.scored(cls[m], cls[1 - m])  # (B, H) each
                    else:
                        scale = trimmer.scale(cls[m], cls[1 - m])
                    decisions.append(Decisions(logits - t.thresholds(trim_index)[1],
                                               torch.ones_like(logits, dtype=torch.bool), scale,
                                               trim_index, "heads", m))
                elif logits is None:
                    logits = trimmer(cls[m], cls[1 - m])  # (B, H)
                if mode == "static":
                    heads[j] = self._static_heads(logits, trim_index, j)
                else:
                    heads[j] = self._choose_heads(logits, mode, noise, trim_index, j, gate, column)
        return heads

    @staticmethod
    def _pack(s: _Stream) -> None:
        """Padded (B, N, D) -> packed rows (T, D) of the live tokens (weight > 0)."""
        s.pack = Packing.of(s.weight, s.runs)
        s.x = s.x.reshape(-1, s.x.shape[-1]).index_select(0, s.pack.rows)  # (T, D)

    def encode_vision(self, pixel_values: Tensor) -> Tensor:
        """Embedding + the untrimmed vision encoder (+ its final norm): (B, 3, H, W) -> (B, 1 + P, D)."""
        x = self.embed_image(pixel_values)  # (B, 1 + P, D)
        ones = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
        for layer in self.vision_layers:
            x = layer(x, ones, None)
        if self.vision_final_norm is not None:
            x = self.vision_final_norm(x)
        return x

    def _shared_vision(self, pixel_values: Tensor, groups: Tensor) -> Tensor:
        """`encode_vision` on the first row of each image group, then copied to every row of its group:
        (B, 3, H, W) -> (B, 1 + P, D) encoder output."""
        b = groups.shape[0]
        _, inverse = torch.unique(groups, return_inverse=True)  # (B,) group of each row
        rows = torch.arange(b, device=groups.device)
        first = torch.full((int(inverse.max()) + 1,), b, dtype=rows.dtype, device=rows.device)
        first = first.scatter_reduce(0, inverse, rows, reduce="amin")  # (U,) a row of each group
        return self.encode_vision(pixel_values[first])[inverse]  # (U, 1 + P, D) -> (B, 1 + P, D)

    def _trim_tokens(self, s: _Stream, logits: Tensor, mode: str, noise, trim_index: int, *,
                     packed: bool = False) -> None:
        """logits (B, N) on the stream's grid."""
        t = self.trim
        training = self.training and mode == "mask"
        gate = token_gate(logits, training=training, tau=t.tau, threshold=t.thresholds(trim_index)[0],
                          uniform=noise(logits.shape) if training and noise else None)  # (B, N)
        if mode == "mask":
            s.weight = s.weight * gate  # masks multiply: pruned stays pruned
            return
        # weights and gate are {0, 1} floats: their product is the keep mask, and `alive` comes back as
        # the next weights (fillers 0, pruned from here on) without bool round trips in the graph
        if packed:
            slots, alive = select_compact(s.weight * gate)  # (T',) flat slots of the old grid, (B, k) new grid
            pack = Packing.of(alive, s.runs)
            s.pos = pack.to_grid(s.pos.reshape(-1).index_select(0, slots))  # (B, k); fillers repeat a live position
            src = slots if s.pack is None else s.pack.src.index_select(0, slots)  # old grid slot -> old packed row
            s.x = s.x.reshape(-1, s.x.shape[-1]).index_select(0, src)  # (T', D)
            s.weight, s.pack = alive, pack
            return
        idx, alive = select_topk_sorted(s.weight * gate, logits)  # (B, k), (B, k)
        s.pos = torch.gather(s.pos, 1, idx)  # (B, k)
        s.x = gather_tokens(s.x, idx)  # (B, k, D)
        s.weight = alive

    def _static_tokens(self, s: _Stream, logits: Tensor, ratio: float) -> None:
        k = torch.sym_min(static_count(s.n_orig, ratio), s.x.shape[1])  # from input shapes only
        idx, alive = select_static(s.weight > 0, logits, k)  # (B, k)
        s.x = gather_tokens(s.x, idx)
        s.pos = torch.gather(s.pos, 1, idx)
        s.weight = alive.to(s.x.dtype)

    def _static_heads(self, logits: Tensor, trim_index: int, module: int) -> HeadChoice | None:
        counts = self.trim.static_head_keep
        n = logits.shape[1]
        kh = n if counts is None else int(counts[trim_index][module])
        if kh >= n:
            return None
        _, idx = torch.topk(logits, max(1, kh), dim=1)  # (B, kh)
        idx, _ = torch.sort(idx, dim=1)
        return HeadChoice(gate=torch.ones(idx.shape, dtype=logits.dtype, device=logits.device), idx=idx)

    def heads_gathered(self) -> list[list[bool]]:
        """Per trimmed layer and attention module: does `prune` mode gather its kept heads (else it masks them)?"""
        c, first, rates = self.config, self.trim.first_trimmed_layer, self.trim.head_batch_keep
        counts = [len(c.attention_modules(first + ti)) for ti in range(len(self.head_trimmers))]
        if rates is not None and [len(r) for r in rates] != counts:
            raise ValueError(f"head_batch_keep has {[len(r) for r in rates]} rates per trimmed layer; the model's "
                             f"attention modules are {counts}")
        return [[self._gathers(ti, j) for j in range(n)] for ti, n in enumerate(counts)]

    def heads_plan(self) -> list[str]:
        """`heads_gathered` as one letter per attention module of each trimmed layer: g(athered), m(asked), or - where
        no head trimmer runs (an idle stream, or head trimming off)."""
        return ["".join("-" if not self.trim.head_trimming or isinstance(self.head_trimmers[ti][j], Idle)
                        else "gm"[not g] for j, g in enumerate(layer)) for ti, layer in enumerate(self.heads_gathered())]

    def _gathers(self, trim_index: int, module: int) -> bool:
        """"auto": where `TrimConfig.head_batch_keep` is at most `GATHER_MAX_KEEP` (nowhere when not measured)."""
        if self.head_impl != "auto":
            return self.head_impl == "gather"
        rates = self.trim.head_batch_keep
        return rates is not None and rates[trim_index][module] <= GATHER_MAX_KEEP

    def _choose_heads(self, logits: Tensor, mode: str, noise, trim_index: int, module: int,
                      gate: Tensor | None = None, column: Tensor | None = None) -> HeadChoice:
        """`gate`: the deterministic gate of `logits` when already computed (`DepthHeadTrimmers`), `column`: the
        same as (B, H, 1, 1) when it comes shaped (`HeadChoice.column`)."""
        t = self.trim
        training = self.training and mode == "mask"
        if gate is None:
            gate = head_gate(logits, training=training, tau=t.tau, threshold=t.thresholds(trim_index)[1],
                             uniform=noise(logits.shape) if training and noise else None)  # (B, H)
        if mode == "mask" or not self._gathers(trim_index, module):
            return HeadChoice(gate=gate, column=column)
        if self.layout == "packed":  # packed rows mix samples in one matmul: one weight set for the batch
            kept = torch.nonzero(gate.amax(dim=0) > 0).squeeze(1)  # (kh,) union over the batch, ascending
            torch._check(kept.shape[0] >= 1)  # every sample keeps a head (`head_gate`): reshapes by kh are safe
            return HeadChoice(gate=gate.index_select(1, kept), kept=kept)  # (B, kh): each sample's own choice among them
        idx, alive = select_topk_sorted(gate, logits)  # (B, kh), float alive flags
        return HeadChoice(gate=alive, idx=idx)

    @staticmethod
    def _orig_mask(s: _Stream) -> Tensor:
        """Keep mask over the original positions, (B, N_orig)."""
        out = torch.zeros(s.weight.shape[0], s.n_orig, dtype=s.weight.dtype, device=s.weight.device)
        return out.scatter_add(1, s.pos, s.weight)  # packed fillers repeat a live position with weight 0

    @staticmethod
    def _head_mask(h: HeadChoice | None, b: int, ref: Tensor, n: int) -> Tensor:
        """(B, H) keep mask of one attention module with n heads."""
        if h is None:
            return torch.ones(b, n, dtype=ref.dtype, device=ref.device)
        if h.kept is not None:
            return torch.zeros(b, n, dtype=h.gate.dtype, device=h.gate.device).index_copy(1, h.kept, h.gate)
        if h.idx is None:
            return h.gate
        return torch.zeros(b, n, dtype=h.gate.dtype, device=h.gate.device).scatter(1, h.idx, h.gate)

    def _layer_flops(self, depth: int, n: list[Tensor], heads: list[HeadChoice | None]) -> Tensor:
        c = self.config
        kept = [c.layer_spec(depth, m).num_heads if h is None else h.gate.sum(dim=1)
                for h, (m, _) in zip(heads, c.attention_modules(depth))]
        return depth_flops(c, depth, n, kept)

    def attention_runs(self) -> list[int]:
        """[vision, text]: the runs of samples each stream's self-attention products run in once packed
        (`contract.stream_attention_runs`)."""
        return stream_attention_runs(self.config)

    def _executed_flops(self, depth: int, streams: list[_Stream], heads: list[HeadChoice | None]) -> Tensor:
        """(B,) each sample's share of what the batch runs at `depth` (`cost.executed_depth_flops`)."""
        c = self.config
        grid = [torch.ones_like(s.weight).sum(dim=1) for s in streams]  # (B,) grid width k, as a tensor (k is symbolic)
        rows = [self._rows_run(s) for s in streams]
        run = [c.layer_spec(depth, m).num_heads if h is None else torch.ones_like(h.gate).sum(dim=1)  # projected heads
               for h, (m, _) in zip(heads, c.attention_modules(depth))]
        runs = [s.pack.split.width.to(s.weight.dtype) if s.pack is not None and s.pack.runs > 1 and c.active(depth, m)
                else None for m, s in enumerate(streams)]
        return executed_depth_flops(c, depth, rows, grid, run, runs)

    @staticmethod
    def _rows_run(s: _Stream) -> Tensor:
        """(B,) tokens the token-wise work runs on per sample: its live ones when packed, the grid width otherwise."""
        return s.weight.detach().sum(dim=1) if s.pack is not None else torch.ones_like(s.weight).sum(dim=1)

    def _run_layer(self, depth: int, streams: list[_Stream], heads: list[HeadChoice | None], *,
                   vision_done: bool = False) -> None:
        """One lockstep depth; `vision_done`: the vision encoder already ran (`_shared_vision`)."""
        c = self.config
        vis, txt = streams
        if not c.is_fusion(depth):
            for m, s, layers, final in ((VISION, vis, self.vision_layers, self.vision_final_norm),
                                        (TEXT, txt, self.text_layers, self.text_final_norm)):
                if depth < len(layers) and not (m == VISION and vision_done):
                    s.x = layers[depth](s.x, s.weight, heads[m], s.pack)
                    if final is not None and depth == len(layers) - 1:
                        s.x = final(s.x)
            return
        f = depth - c.encoder_depth
        xv, xt = vis.x, txt.x  # both streams attend to the other's layer input
        if c.active(depth, VISION):  # co-attention; BLIP-style fusion runs the text stream only
            vis.x = self.vision_fusion[f](xv, xt, vis.weight, txt.weight, heads[0], heads[1], vis.pack, txt.pack)
        txt.x = self.text_fusion[f](xt, xv, txt.weight, vis.weight, heads[2], heads[3], txt.pack, vis.pack)
