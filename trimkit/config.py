"""Configuration dataclasses: the backbone (`ModelConfig`) and the trimmers (`TrimConfig`).

Both are saved, resolved, inside every checkpoint and exported artifact.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .contract import HEAD_KEEP_BATCH

__all__ = ["EncoderSpec", "ModelConfig", "TrimConfig", "TrainConfig", "PRESETS", "preset_config", "VISION", "TEXT",
           "autocast"]

VISION, TEXT = 0, 1
NORM_STYLES = ("pre", "post")
ACTIVATIONS = ("gelu", "quick_gelu")  # FFN activation: exact GELU, or CLIP's x * sigmoid(1.702 x)
FUSION_STYLES = ("coattn", "text")
CLASSIFIER_HEADS = ("mlp", "linear")
TOKEN_MODALITIES = ("both", "vision", "text")
FREEZE_CHOICES = ("none", "vision", "text", "both")  # which pretrained encoders stay fixed in training
PRETRAIN_TASKS = ("tokens", "match")  # `trimkit pretrain --task`: vision tokens, image-text matching
TRAIN_PRECISIONS = ("fp32", "bf16")  # bf16: autocast matmuls/convs (fp32 master weights, losses in fp32)
# `trimkit calibrate int8` choices (here so the CLI offers them without importing the calibration code)
INT8_METHODS = ("minmax", "entropy", "percentile")
INT8_ACTIVATIONS = ("int8", "uint8")
INT8_SCOPES = ("all", "mlp", "attention")
SMOOTH_WHERE = ("all", "layernorm")  # --smooth-where: every quantized matmul input, or only LayerNorm-folded ones


@dataclass
class EncoderSpec:
    """One modality's transformer encoder, when it differs from the shared sizes (imported backbones:
    a BERT text encoder and a DINOv2 image encoder have their own depth, width, heads and layer style).

    Also the dimensions of one lockstep layer for the cost model (`hidden_size`, `num_heads`,
    `head_dim`, `intermediate_size`)."""

    layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    norm: str = "pre"  # "pre": x + f(LN(x)) (ViT, DINOv2); "post": LN(x + f(x)) (BERT)
    layer_scale: bool = False  # DINOv2: learned per-channel scale on both residual branches
    layer_norm_eps: float = 1e-6
    embed_norm: bool = False  # BERT: LayerNorm over the summed embeddings
    final_norm: bool = False  # ViT/DINOv2: LayerNorm on the encoder's output
    activation: str = "gelu"  # FFN activation (ACTIVATIONS); CLIP's image encoder uses "quick_gelu"

    def __post_init__(self) -> None:
        if self.layers < 0 or self.hidden_size < 1 or self.num_heads < 1 or self.intermediate_size < 1:
            raise ValueError(f"bad encoder sizes: {self}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.norm not in NORM_STYLES:
            raise ValueError(f"unknown norm style {self.norm!r}; choose pre or post")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose {' or '.join(ACTIVATIONS)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass
class ModelConfig:
    """METER-style backbone: ViT image encoder + text encoder + co-attention fusion."""

    vocab_size: int = 64  # word-level vocabulary incl. [PAD]=0, [UNK]=1, [CLS]=2
    max_text_len: int = 40  # position embeddings for text (incl. [CLS])
    image_size: int = 64  # square input images, pixels
    patch_size: int = 8  # ViT patch size; image_size must be a multiple
    # image stem: "patch" = ViT's linear patch embedding; "conv" = early convolutions (Xiao et al. 2021):
    # log2(patch_size) stride-2 3x3 convs + a 1x1 projection, the same patch grid. Trained from scratch on
    # easy-VQA's images it learns shapes about twice as fast (the backbone_probe benchmark).
    stem: str = "patch"
    num_channels: int = 3
    hidden_size: int = 192  # D, shared by both encoders and the fusion layers
    num_heads: int = 6  # attention heads per attention module
    intermediate_size: int = 768  # FFN hidden width
    encoder_layers: int = 4  # per modality; both encoders run in lockstep
    fusion_layers: int = 2  # co-attention layers (self-attn, cross-attn, FFN per stream)
    num_labels: int = 13  # answer set size
    layer_norm_eps: float = 1e-6
    dropout: float = 0.0  # residual/attention dropout in training
    # Per-modality encoders (imported backbones). None: `encoder_layers` pre-LN layers of the shared sizes.
    # The shared sizes above are then the fusion layers' (an encoder of another width is projected to
    # `hidden_size` when it enters the fusion). Encoders of different depths run in lockstep from depth 0;
    # the shorter one idles (no layer, no trimmer, no FLOPs) until the fusion starts.
    vision_encoder: EncoderSpec | None = None
    text_encoder: EncoderSpec | None = None
    # "coattn": METER co-attention, both streams run self-attn + cross-attn + FFN (pre-LN, modality type
    # embeddings, wider/narrower encoders projected to hidden_size). "text": BLIP's text encoder with
    # cross-attention -- only the text stream runs (self-attn, cross-attn to the image tokens at their own
    # width, FFN); the image stream idles and serves as keys.
    fusion_style: str = "coattn"
    fusion_norm: str = "pre"  # "post" for BLIP's BERT-style layers
    # The classifier also reads the element-wise product of the two pooled [CLS] states (Hadamard-product
    # bilinear pooling, Kim et al. 2017). A yes/no question ("is there a red shape?") compares the question's
    # attribute with the image's: a sum of products, linear in the product term, but a slow thing for a
    # concatenation + MLP head (or the fusion) to learn -- backbones stall answering from the words alone.
    pool_product: bool = False
    # METER's own head (imported METER checkpoints): both streams always pass a Linear at the fusion entry,
    # even at the fusion width (False: only an encoder of another width is projected); the poolers read the
    # last layer's [CLS] as it is (False: a LayerNorm first); the classifier's LayerNorm has its own epsilon
    # (None: layer_norm_eps) -- METER's BERT-style fusion layers use 1e-12, its head PyTorch's default 1e-5.
    fusion_proj_always: bool = False
    pool_norm: bool = True
    classifier_norm_eps: float | None = None
    # "mlp": Linear, LayerNorm, GELU, Linear over the pooled states (METER's VQA head); "linear": one Linear
    # (METER's image-text matching head)
    classifier_head: str = "mlp"

    def __post_init__(self) -> None:
        for name in ("vision_encoder", "text_encoder"):
            v = getattr(self, name)
            if isinstance(v, dict):
                setattr(self, name, EncoderSpec(**v))
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.stem not in ("patch", "conv"):
            raise ValueError(f"unknown stem {self.stem!r}; choose patch or conv")
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ValueError(f"the conv stem needs a power-of-two patch_size, not {self.patch_size}")
        if self.encoder_layers < 1 or self.fusion_layers < 0:
            raise ValueError("need encoder_layers >= 1 and fusion_layers >= 0")
        if self.encoder_depth + self.fusion_layers < 1:
            raise ValueError("the model needs at least one layer")
        if self.fusion_style not in FUSION_STYLES:
            raise ValueError(f"unknown fusion_style {self.fusion_style!r}; choose {' or '.join(FUSION_STYLES)}")
        if self.fusion_norm not in NORM_STYLES:
            raise ValueError(f"unknown fusion_norm {self.fusion_norm!r}; choose pre or post")
        if self.fusion_style == "text" and self.encoder(TEXT).hidden_size != self.hidden_size:
            raise ValueError("with fusion_style 'text' the text encoder's width must be the fusion width")
        if self.fusion_layers == 0 and self.encoder(VISION).hidden_size != self.encoder(TEXT).hidden_size:
            raise ValueError("encoders of different widths need fusion layers (they are projected at fusion entry)")
        if self.pool_product and self.final_width(VISION) != self.final_width(TEXT):
            raise ValueError(f"pool_product needs final states of equal widths, not {self.final_width(VISION)} "
                             f"and {self.final_width(TEXT)}")
        if self.classifier_head not in CLASSIFIER_HEADS:
            raise ValueError(f"unknown classifier_head {self.classifier_head!r}; choose {' or '.join(CLASSIFIER_HEADS)}")
        if self.max_text_len < 2:
            raise ValueError("max_text_len must leave room for [CLS] and one word")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def encoder(self, modality: int) -> EncoderSpec:
        """The encoder of VISION (0) or TEXT (1)."""
        spec = self.vision_encoder if modality == VISION else self.text_encoder
        return spec if spec is not None else EncoderSpec(
            self.encoder_layers, self.hidden_size, self.num_heads, self.intermediate_size,
            layer_norm_eps=self.layer_norm_eps)

    @property
    def fusion(self) -> EncoderSpec:
        """Sizes of the co-attention fusion layers."""
        return EncoderSpec(self.fusion_layers, self.hidden_size, self.num_heads, self.intermediate_size,
                           layer_norm_eps=self.layer_norm_eps, norm=self.fusion_norm)

    @property
    def encoder_depth(self) -> int:
        """Lockstep depths taken by the encoders (the deeper one); fusion layers follow."""
        return max(self.encoder(VISION).layers, self.encoder(TEXT).layers)

    @property
    def num_layers(self) -> int:
        """Depth of the lockstep stack: encoder layers then fusion layers."""
        return self.encoder_depth + self.fusion_layers

    def is_fusion(self, depth: int) -> bool:
        return depth >= self.encoder_depth

    def active(self, depth: int, modality: int) -> bool:
        """Does `modality` run a layer at lockstep `depth`? (False while a shorter encoder idles.)"""
        if self.is_fusion(depth):
            return self.fusion_style == "coattn" or modality == TEXT
        return depth < self.encoder(modality).layers

    def layer_spec(self, depth: int, modality: int) -> EncoderSpec:
        """Sizes of `modality`'s stream at `depth` (its encoder, or the fusion)."""
        if self.is_fusion(depth) and (self.fusion_style == "coattn" or modality == TEXT):
            return self.fusion
        return self.encoder(modality)

    def stream_width(self, depth: int, modality: int) -> int:
        """Width of `modality`'s hidden states entering `depth` (a depth past the last: the final width)."""
        return self.layer_spec(depth, modality).hidden_size

    def final_width(self, modality: int) -> int:
        """Width of `modality`'s hidden states after the last layer."""
        return self.stream_width(self.num_layers, modality) if self.fusion_layers else self.encoder(modality).hidden_size

    def attention_modules(self, depth: int) -> list[tuple[int, str]]:
        """(modality, kind) of each attention module at `depth`, in head-trimmer order: encoder
        [vision, text]; fusion [vision self, vision cross, text self, text cross]."""
        if self.is_fusion(depth):
            return [(VISION, "self"), (VISION, "cross"), (TEXT, "self"), (TEXT, "cross")]
        return [(VISION, "self"), (TEXT, "self")]

    @property
    def max_heads(self) -> int:
        return max(self.encoder(VISION).num_heads, self.encoder(TEXT).num_heads,
                   self.num_heads if self.fusion_layers else 0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, d)  # nested encoder dicts become EncoderSpec in __post_init__


@dataclass
class TrimConfig:
    """SmartTrim trimmers."""

    token_trimming: bool = True  # XModal-aware token trimmers in every trimmed layer
    token_modalities: str = "both"  # which streams' tokens are trimmed: both | vision | text
    head_trimming: bool = True  # modal-adaptive head trimmers on every attention module
    first_trimmed_layer: int = 1  # lockstep depth of the first trimmed layer (0 = trim from the start)
    local_only: bool = False  # ablation: token score = local MLP only (no cross-modal global score)
    token_threshold: float = 0.0  # inference: keep a token where its logit > threshold
    head_threshold: float = 0.0  # inference: keep a head where its logit > threshold
    # budget calibration, per trimmed layer: added to both thresholds of that layer (None = no offsets)
    layer_threshold_offsets: list[float] | None = field(default=None)
    tau: float = 1.0  # Gumbel-sigmoid temperature in training
    init_keep_logit: float = 5.0  # stable init: last bias of every trimmer (sigmoid(5) = 0.993)
    score_hidden_ratio: int = 4  # local MLP is D -> D/ratio -> 1
    proj_ratio: int = 16  # global score projection d_p = D/ratio (small: the trimmer overhead counts)
    # static mode (calibrated): per trimmed layer, the fraction of each modality's input length kept
    # ([vision, text]) and the heads kept per attention module; k then depends on input shapes only
    static_keep_ratios: list[list[float]] | None = field(default=None)
    static_head_keep: list[list[int]] | None = field(default=None)
    # measured with these thresholds (`calibrate budget`/`heads`, the end of training): per trimmed layer and
    # attention module, the mean fraction of its heads that at least one sample of a batch of `head_keep_batch`
    # keeps -- the heads a packed graph gathering for the batch runs; `--heads auto` gathers where it is low (None:
    # not measured). `head_keep_batch`: the serving batch the rates are planned for (at batch 1 a rate is a
    # sample's own kept fraction)
    head_batch_keep: list[list[float]] | None = field(default=None)
    head_keep_batch: int = HEAD_KEEP_BATCH

    def __post_init__(self) -> None:
        if self.first_trimmed_layer < 0:
            raise ValueError("first_trimmed_layer must be >= 0")
        if self.tau <= 0:
            raise ValueError("tau must be > 0")
        if self.head_keep_batch < 1:
            raise ValueError("head_keep_batch must be >= 1")
        if self.token_modalities not in TOKEN_MODALITIES:
            raise ValueError(f"token_modalities must be one of {', '.join(TOKEN_MODALITIES)}, not {self.token_modalities!r}")

    def trims_tokens(self, modality: int) -> bool:
        """Does this config trim the tokens of VISION (0) or TEXT (1)?"""
        return self.token_trimming and self.token_modalities in ("both", ("vision", "text")[modality])

    def thresholds(self, trim_index: int) -> tuple[float, float]:
        """(token, head) decision thresholds of one trimmed layer."""
        off = self.layer_threshold_offsets[trim_index] if self.layer_threshold_offsets else 0.0
        return self.token_threshold + off, self.head_threshold + off

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrimConfig:
        return _from_dict(cls, d)


def _from_dict(cls, d: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
    return cls(**d)


# Presets: tiny (tests, < 1 M parameters), small (benchmarks on a 2-core CPU), base (METER-like sizes).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        max_text_len=16, image_size=32, patch_size=8, hidden_size=64, num_heads=4,
        intermediate_size=128, encoder_layers=2, fusion_layers=1,
    ),
    "small": dict(
        max_text_len=24, image_size=64, patch_size=8, stem="conv", hidden_size=192, num_heads=6,
        intermediate_size=768, encoder_layers=4, fusion_layers=2,
    ),
    "base": dict(
        max_text_len=40, image_size=224, patch_size=16, hidden_size=768, num_heads=12,
        intermediate_size=3072, encoder_layers=12, fusion_layers=6,
    ),
}


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The `ModelConfig` of a named preset, with overrides (e.g. vocab_size, num_labels)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------- training
# The one declaration of the training settings and their defaults: `trimkit train` builds its options from
# these fields, and every checkpoint a run writes saves them, so that `--resume` restores them.


def autocast(precision: str):
    """The context training passes run in: bfloat16 autocast for `bf16`, else a no-op (torch imported here, so
    that reading the settings needs no torch)."""
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


@dataclass
class TrainConfig:
    data: str = "easyvqa"  # easyvqa | shapes | FILE.jsonl
    out: str = "trained.pt"  # best checkpoint; the latest state (for --resume) goes to <out>.last.pt
    # schedule
    epochs: float = 3.0  # used when steps is None
    steps: int | None = None  # total optimizer steps (overrides epochs)
    batch_size: int = 64  # global batch (split across processes under torchrun)
    # up to K questions of one image sit side by side in the epoch order; the untrimmed passes (the
    # backbone's, SmartTrim's full pass) then run the vision encoder once per image. 1 = plain shuffle
    questions_per_image: int = 1
    lr: float = 3e-4  # backbone AdamW learning rate (peak)
    trimmer_lr: float = 5e-3  # trimmer learning rate (peak): Adam moves logits ~lr per step
    weight_decay: float = 0.01
    lr_warmup_frac: float = 0.05  # linear LR warm-up, then cosine decay to 10%
    grad_clip: float = 1.0
    seed: int = 0
    val_fraction: float = 0.1
    eval_every: int | None = None  # steps between evaluations (default: once per epoch)
    eval_samples: int | None = 2000  # validation questions per evaluation (None = all)
    # SmartTrim objective: CE(P) + alpha CE(full) + lambda_SD KL(full || P) + lambda_R (ratio - target_t)^2
    no_trim: bool = False  # fine-tune the backbone only (mode off, CE only, trimmers frozen)
    target_ratio: float = 0.5  # final FLOPs ratio target
    full_task_weight: float = 1.0  # alpha
    distill_weight: float = 1.0  # lambda_SD
    ratio_weight: float = 5.0  # lambda_R
    tau: float = 1.0  # Gumbel-sigmoid temperature
    warmup_frac: float = 0.3  # curriculum: target goes 1.0 -> target_ratio over this fraction of steps
    # decision margin (trimkit's addition): + margin_weight * mean relu(1 - |logit - threshold| / M) over the
    # gate decisions, so that few sit where int8/fp16 rounding flips them. 0 = off (SmartTrim's objective)
    decision_margin: float = 0.0
    margin_weight: float = 1.0
    relative_margin: float = 0.0  # with decision_margin: also this fraction of each logit's scale (trimmers.margin_terms)
    # ablations
    no_distill: bool = False  # drop the self-distillation KL term
    no_curriculum: bool = False  # no stable init (trimmers re-initialized at random) and no linear scheduler
    local_only: bool = False  # token trimmers use the local score only
    trim_tokens: str = "both"  # whose tokens are trimmed: both | vision | text (heads are trimmed in all)
    freeze: str = "none"  # encoders whose weights stay fixed: none | vision | text | both (e.g. pretrained ones)
    # fp32 | bf16: the training forward passes under bfloat16 autocast (matmuls and convolutions in bf16,
    # weights, optimizer, losses and evaluation in fp32); ~1.6x faster steps on CPUs with AVX512-BF16/AMX
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if not 0.0 < self.target_ratio <= 1.0:
            raise ValueError(f"--target-ratio must be in (0, 1], got {self.target_ratio}")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        if self.questions_per_image < 1:
            raise ValueError("--questions-per-image must be >= 1")
        if self.steps is not None and self.steps < 1:
            raise ValueError("--steps must be >= 1")
        if self.epochs <= 0:
            raise ValueError("--epochs must be > 0")
        if self.decision_margin < 0:
            raise ValueError("--decision-margin must be >= 0")
        if self.margin_weight < 0:
            raise ValueError("--margin-weight must be >= 0")
        if not 0 <= self.relative_margin < 1:
            raise ValueError("--relative-margin must be in [0, 1)")
        if self.relative_margin > 0 and self.decision_margin <= 0:
            raise ValueError("--relative-margin needs --decision-margin M > 0")
        if not 0.0 <= self.warmup_frac <= 1.0:
            raise ValueError("--warmup-frac must be in [0, 1]")
        if self.tau <= 0:
            raise ValueError("--tau must be > 0")
        if self.trim_tokens not in TOKEN_MODALITIES:
            raise ValueError(f"--trim-tokens must be one of {', '.join(TOKEN_MODALITIES)}, not {self.trim_tokens!r}")
        if self.precision not in TRAIN_PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(TRAIN_PRECISIONS)}, not {self.precision!r}")
        if self.freeze not in FREEZE_CHOICES:
            raise ValueError(f"--freeze must be one of {', '.join(FREEZE_CHOICES)}, not {self.freeze!r}")

    @property
    def frozen_modalities(self) -> list[int]:
        return {"none": [], "vision": [VISION], "text": [TEXT], "both": [VISION, TEXT]}[self.freeze]

    def autocast(self):
        """The context the training passes run in (see `autocast`)."""
        return autocast(self.precision)

    @property
    def distill(self) -> float:
        return 0.0 if self.no_distill else self.distill_weight

    def target_at(self, step: int, total: int) -> float:
        """Curriculum target of the FLOPs ratio at `step` of `total` (linear from 1.0, then flat)."""
        if self.no_curriculum or self.warmup_frac == 0.0:
            return self.target_ratio
        ramp = max(1, int(round(self.warmup_frac * total)))
        t = min(1.0, step / ramp)
        return 1.0 + (self.target_ratio - 1.0) * t

    def curriculum_done(self, step: int, total: int) -> bool:
        return self.no_curriculum or step >= int(round(self.warmup_frac * total))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
