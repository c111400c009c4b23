"""The SmartTrim objective as one module (so DistributedDataParallel sees a single forward).

loss = CE(f(x;P), y) + alpha CE(f(x;0), y) + lambda_SD KL(f(x;0) || f(x;P)) + lambda_R (ratio - target_t)^2
       [+ lambda_M margin(P)]

The optional last term (`--decision-margin M [--relative-margin R]`, weight `--margin-weight`) is trimkit's,
not SmartTrim's: the mean hinge relu(1 - |logit - threshold| / max(M, R scale)) over the gate decisions
(`trimmers.margin_terms`), which leaves few decisions close enough to the threshold for int8 or fp16
rounding in an exported graph to flip them.

f(x;0) is the same weights with the trimmers off (the self-distillation teacher, detached in
the KL); `ratio` is the mean per-instance FLOPs ratio over the *global* batch (all-reduced with
gradients under torchrun), so the ratio term only steers the average and leaves each instance
free to spend more or less.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TrainConfig
from ..models import MeterModel

__all__ = ["SmartTrimObjective", "LossParts", "kl_teacher_student"]


@dataclass
class LossParts:
    loss: Tensor
    ce: Tensor
    ce_full: Tensor
    kl: Tensor
    ratio_loss: Tensor
    margin: Tensor  # decision-margin hinge (0 unless --decision-margin)
    ratio: Tensor  # mean FLOPs ratio of the global batch
    correct: Tensor  # number of correct predictions (trimmed) in this process's batch

    def floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("loss", "ce", "ce_full", "kl", "ratio_loss", "margin", "ratio")}


def kl_teacher_student(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """KL(p_teacher || p_student), mean over the batch; the teacher is detached."""
    t = F.log_softmax(teacher_logits.detach(), dim=-1)
    s = F.log_softmax(student_logits, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _global_ratio(total: Tensor, count: Tensor) -> Tensor:
    """sum(total) / sum(count) over every process, differentiable in `total` (all_reduce with autograd
    under torchrun), so a mean over the global batch is the same in one process or several."""
    if not _distributed():
        return total / count.clamp_min(1.0)
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_reduce

    count = count.detach().clone()
    dist.all_reduce(count)
    return all_reduce(total) / count.clamp_min(1.0)


def _global_mean(x: Tensor) -> Tensor:
    """Mean over every process's rows, differentiable."""
    return _global_ratio(x.sum(), x.new_tensor(float(x.shape[0]))) if _distributed() else x.mean()


class SmartTrimObjective(nn.Module):
    def __init__(self, model: MeterModel, cfg: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor, labels: Tensor,
                target: float, noise=None, image_groups: Tensor | None = None) -> LossParts:
        """`image_groups` (B,): rows with equal ids share an image; the untrimmed passes encode it once."""
        cfg = self.cfg
        zero = pixel_values.new_zeros(())
        if cfg.no_trim:
            logits = self.model(pixel_values, input_ids, attention_mask, mode="off",
                                image_groups=image_groups).logits.float()
            ce = F.cross_entropy(logits, labels)
            return LossParts(ce, ce, zero, zero, zero, zero, zero + 1.0, (logits.argmax(-1) == labels).sum())
        out = self.model(pixel_values, input_ids, attention_mask, mode="mask", noise=noise,
                         margin=cfg.decision_margin, relative_margin=cfg.relative_margin)
        margin = zero if out.margin_terms is None else _global_ratio(*out.margin_terms)
        logits = out.logits.float()  # losses in fp32 also under bf16 autocast
        ce = F.cross_entropy(logits, labels)
        need_full = cfg.full_task_weight > 0 or cfg.distill > 0
        ce_full = kl = zero
        if need_full:
            with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.full_task_weight > 0):
                full_logits = self.model(pixel_values, input_ids, attention_mask, mode="off",
                                         image_groups=image_groups).logits.float()
            ce_full = F.cross_entropy(full_logits, labels)
            if cfg.distill > 0:
                kl = kl_teacher_student(full_logits, logits)
        ratio = _global_mean(out.flops_ratio.float())
        ratio_loss = (ratio - target) ** 2
        loss = ce + cfg.full_task_weight * ce_full + cfg.distill * kl + cfg.ratio_weight * ratio_loss
        loss = loss + cfg.margin_weight * margin
        return LossParts(loss, ce, ce_full, kl, ratio_loss, margin, ratio.detach(),
                         (logits.argmax(-1) == labels).sum())
