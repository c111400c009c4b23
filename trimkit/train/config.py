"""Training settings (saved inside every checkpoint a run writes, so `--resume` restores them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..config import FREEZE_CHOICES, TEXT, TOKEN_MODALITIES, TRAIN_PRECISIONS, VISION

__all__ = ["TrainConfig", "autocast"]


def autocast(precision: str) -> torch.autocast:
    """The context training passes run in: bfloat16 autocast for `bf16`, else a no-op."""
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

    def autocast(self) -> torch.autocast:
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
