"""`trimkit train`: backbone fine-tuning (`no_trim`) and SmartTrim fine-tuning.

- Data order is a function of (seed, epoch); Gumbel noise and dropout are seeded per step:
  `--resume` continues bit-for-bit, and two processes under torchrun give the result of one
  process with the same global batch.
- Evaluation every epoch (or `eval_every` steps) on the validation split: accuracy of the
  pruned model in `prune` mode and the per-instance FLOPs ratio (mean, spread), beside the mean ratio of
  the training (Gumbel) gates since the last evaluation (and of the curriculum target they were steered to);
  `budget_warning` flags a best checkpoint whose deterministic gates miss the budget.
- `<out>` holds the best checkpoint (best validation accuracy once the curriculum has reached
  its final target; with a decision margin, ties go to the checkpoint whose decisions sit farther from
  their thresholds: p1 over questions of the closest one, relative to its scale — `trimkit eval`'s
  measure of what int8/fp16 rounding flips); `<out stem>.last.pt` the latest weights with the train
  state for resume.
  Writes are atomic; Ctrl-C stops at the next step boundary and saves the latest state.
"""

from __future__ import annotations

import math
import shlex
import signal
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..calibration.budget import with_head_batch_keep
from ..checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint
from ..config import TrainConfig, TrimConfig
from ..data import load_dataset
from ..errors import BadInputError
from ..evaluate import evaluate
from ..fileio import check_writable
from ..models import MeterModel, build_model
from ..trimmers import BatchNoise
from .distributed import DistInfo, any_flag, barrier, init_distributed, shutdown_distributed
from .objective import SmartTrimObjective
from .pretrain import check_pretrain_seed

__all__ = ["train", "TrainResult", "budget_warning", "last_path", "with_trim_config"]


@dataclass
class TrainResult:
    out: Path
    last: Path
    steps_done: int
    total_steps: int
    interrupted: bool
    best: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    config: TrainConfig | None = None  # the run's own (from the train state under --resume)


def last_path(out: str | Path) -> Path:
    """trim.pt -> trim.last.pt"""
    p = Path(out)
    return p.with_name(p.stem + ".last" + (p.suffix or ".pt"))


def with_trim_config(model: MeterModel, trim: TrimConfig) -> MeterModel:
    """The same weights under another trimmer config (e.g. `local_only`, which drops the global branch)."""
    if trim == model.trim:
        return model
    new = build_model(model.config, trim)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    allowed = ("proj.weight", "cls_proj.weight")  # the global branch (local_only changes)
    # token trimmers of a modality switched off or on (token_modalities): dropped, or new at the stable init
    switched = {str(m) for m in (0, 1) if model.trim.trims_tokens(m) != trim.trims_tokens(m)}

    def expected(k: str) -> bool:
        return k.startswith("token_trimmers.") and (k.endswith(allowed) or k.split(".")[2] in switched)

    bad = [k for k in [*missing, *unexpected] if not expected(k)]
    if bad:
        raise BadInputError(f"cannot change the trimmer config of this checkpoint: {', '.join(bad[:4])}")
    for attr in ("labels", "tokenizer", "meta"):
        setattr(new, attr, getattr(model, attr, None))
    return new


def randomize_trimmers(model: MeterModel, seed: int) -> None:
    """Ordinary random init of every trimmer instead of the stable one (the no-curriculum ablation)."""
    g = torch.Generator().manual_seed(seed + 7919)
    with torch.no_grad():
        for name, p in [*model.token_trimmers.named_parameters(), *model.head_trimmers.named_parameters()]:
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def _param_groups(model: MeterModel, cfg: TrainConfig) -> list[dict]:
    trim_ids = {id(p) for p in model.trimmer_parameters()}
    decay, no_decay = [], []
    for p in model.parameters():
        if id(p) in trim_ids or not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
              {"params": no_decay, "weight_decay": 0.0, "base_lr": cfg.lr}]
    if not cfg.no_trim:
        groups.append({"params": model.trimmer_parameters(), "weight_decay": 0.0, "base_lr": cfg.trimmer_lr})
    return groups


def _lr_scale(step: int, total: int, warmup_frac: float) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    warm = max(1, int(round(warmup_frac * total)))
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def epoch_order(image_index: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """A shuffled order of the questions (`image_index`: (Q,) image of each) in which up to k questions
    of one image sit side by side: each image's questions, shuffled, are cut into chunks of k and the
    chunks are shuffled. k = 1 is a plain `torch.randperm`."""
    n = image_index.shape[0]
    perm = torch.randperm(n, generator=generator)
    if k == 1:
        return perm
    img = image_index[perm]
    by_img = torch.sort(img, stable=True).indices  # each image's questions together, in shuffled order
    grouped = img[by_img]
    pos = torch.arange(n)
    starts = torch.ones(n, dtype=torch.bool)
    starts[1:] = grouped[1:] != grouped[:-1]
    rank = pos - torch.cummax(torch.where(starts, pos, 0), dim=0).values  # rank within its image
    chunk = torch.cumsum((rank % k == 0).long(), dim=0) - 1  # chunk id of each grouped position
    key = torch.randperm(int(chunk[-1]) + 1, generator=generator)[chunk] * k + rank % k  # unique keys
    return perm[by_img[torch.sort(key).indices]]


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 12_345) % (2**63 - 1)


class _StopFlag:
    """Ctrl-C sets a flag checked at step boundaries; a second Ctrl-C aborts at once."""

    def __init__(self) -> None:
        self.set = False
        self._old = None

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.set:  # the handler this one replaced (the CLI's) records the interruption and raises
            if callable(self._old):
                self._old(signum, frame)
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def resumed_config(ckpt_path: str | Path, saved: TrainConfig, cfg: TrainConfig, given: Collection[str]) -> TrainConfig:
    """The saved run's settings (only `out` may move). A setting the caller gave that differs from the saved
    run's is refused: a resumed run continues bit for bit, so silently dropping it would mislead."""
    conflicts = [name for name in sorted(given) if name != "out" and getattr(cfg, name) != getattr(saved, name)]
    if conflicts:
        said = ", ".join(f"--{n.replace('_', '-')} {getattr(cfg, n)!r} (saved: {getattr(saved, n)!r})" for n in conflicts)
        raise BadInputError(f"{ckpt_path}: --resume continues the saved run as it was; options that differ from it: "
                            f"{said}; drop them, or start a new run from a checkpoint")
    return TrainConfig.from_dict({**saved.to_dict(), "out": cfg.out or saved.out})


def _prepare(ckpt_path: str | Path, cfg: TrainConfig, resume: bool,
             given: Collection[str] = ()) -> tuple[MeterModel, TrainConfig, dict | None]:
    raw = read_checkpoint(ckpt_path)
    state = raw.get("train_state")
    if resume:
        if not state:
            raise BadInputError(f"{ckpt_path}: has no train state to resume (use the .last.pt a run wrote)")
        cfg = resumed_config(ckpt_path, TrainConfig.from_dict(state["config"]), cfg, given)
    model = model_from_checkpoint(raw, ckpt_path)
    if model.tokenizer is None:
        raise BadInputError(f"{ckpt_path}: checkpoint has no tokenizer")
    if not resume:
        check_pretrain_seed(model.meta, cfg.data, cfg.seed, str(ckpt_path))
        trim = TrimConfig.from_dict({**model.trim.to_dict(), "tau": cfg.tau, "local_only": cfg.local_only,
                                     "token_modalities": cfg.trim_tokens, "head_batch_keep": None})
        model = with_trim_config(model, trim)
        if cfg.no_curriculum and not cfg.no_trim:
            randomize_trimmers(model, cfg.seed)
    return model, cfg, (state if resume else None)


def train(ckpt: str | Path, cfg: TrainConfig, *, resume: bool = False, given: Collection[str] = (),
          force: bool = False, console=None, show_progress: bool = True,
          stop_at_step: int | None = None) -> TrainResult:
    """Train the model in `ckpt` as `cfg` says; returns where the checkpoints went and the history.

    resume: continue the run saved in `ckpt` with its own settings; `given` names the fields of `cfg` the
    caller set on purpose, and any of them that differs from the saved run's is refused (BadInputError).
    stop_at_step: stop (as Ctrl-C would) once this many steps are done, saving the latest state.
    """
    t0 = time.perf_counter()
    dist = init_distributed()
    try:
        return _train(ckpt, cfg, resume=resume, given=given, force=force, console=console,
                      show_progress=show_progress, stop_at_step=stop_at_step, dist=dist, t0=t0)
    finally:
        shutdown_distributed(dist)


def _train(ckpt, cfg, *, resume, given, force, console, show_progress, stop_at_step, dist: DistInfo,
           t0) -> TrainResult:
    model, cfg, state = _prepare(ckpt, cfg, resume, given)
    out, last = Path(cfg.out), last_path(cfg.out)
    if dist.main and not resume:
        check_writable(out, force=force)
        check_writable(last, force=force)
    if cfg.batch_size % dist.world:
        raise BadInputError(f"--batch-size {cfg.batch_size} is not divisible by {dist.world} processes")
    data = load_dataset(cfg.data, tokenizer=model.tokenizer, labels=model.labels,
                        image_size=model.config.image_size, seed=cfg.seed, val_fraction=cfg.val_fraction,
                        splits=("train", "val"))
    n_train = len(data.train)
    per_epoch = n_train // cfg.batch_size
    if per_epoch < 1:
        raise BadInputError(f"{cfg.data}: {n_train} training questions are fewer than --batch-size {cfg.batch_size}")
    total = cfg.steps or max(1, int(math.ceil(cfg.epochs * per_epoch)))
    eval_every = cfg.eval_every or per_epoch

    if cfg.no_trim:
        for p in model.trimmer_parameters():
            p.requires_grad_(False)
    for m in cfg.frozen_modalities:  # no weight gradients, no optimizer state; in --no-trim no backward at all
        for p in model.encoder_parameters(m):
            p.requires_grad_(False)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.999))
    step, best, history, earlier = 0, None, [], 0.0
    gates = [0.0, 0.0, 0]  # since the last evaluation: sums of the training (Gumbel) gates' batch FLOPs ratio and
    # of the curriculum target it was steered to, and the step count
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        step, best, history = int(state["step"]), state.get("best"), list(state.get("history", []))
        earlier = float(state.get("seconds", 0.0))  # wall time of the run's earlier sessions
        gates = list(state.get("train_gates", gates))
    objective: torch.nn.Module = SmartTrimObjective(model, cfg)
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        objective = DistributedDataParallel(objective)
    local_b = cfg.batch_size // dist.world
    eval_mode = "off" if cfg.no_trim else "prune"

    def train_state(at: int) -> dict:
        return {"config": cfg.to_dict(), "step": at, "total_steps": total, "optimizer": opt.state_dict(),
                "best": best, "history": history, "rng": torch.get_rng_state(), "train_gates": list(gates),
                "seconds": earlier + time.perf_counter() - t0}

    def save_best(at: int, metrics: dict) -> None:
        if not cfg.no_trim:  # the head keep rates `export --heads auto` reads, at the saved model's thresholds
            model.trim = with_head_batch_keep(model, data.val, samples=cfg.eval_samples, seed=cfg.seed)
        save_checkpoint(model, out, force=True, meta={"train": {"step": at, "config": cfg.to_dict(), **metrics}})

    perm_epoch, perm = -1, None
    interrupted = False
    progress = _Progress(console if dist.main else None, total, step, enabled=show_progress and dist.main)
    with _StopFlag() as stop, progress:
        while step < total:
            if any_flag(stop.set or (stop_at_step is not None and step >= stop_at_step), dist):
                interrupted = True
                break
            epoch = step // per_epoch
            if epoch != perm_epoch:
                perm = epoch_order(data.train.image_index, cfg.questions_per_image,
                                   torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
                perm_epoch = epoch
            pos = (step % per_epoch) * cfg.batch_size
            idx = perm[pos + dist.rank * local_b: pos + (dist.rank + 1) * local_b]
            pv, ids, mask, y = data.train.batch(idx)
            groups = data.train.image_index[idx] if cfg.questions_per_image > 1 else None
            torch.manual_seed(_step_seed(cfg.seed, step))  # dropout
            noise = BatchNoise(_step_seed(cfg.seed + 1, step), cfg.batch_size, dist.rank * local_b)
            scale = _lr_scale(step, total, cfg.lr_warmup_frac)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * scale
            target = cfg.target_at(step, total)
            with cfg.autocast():
                parts = objective(pv, ids, mask, y, target, noise, groups)
            opt.zero_grad(set_to_none=True)
            parts.loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
            opt.step()
            step += 1
            floats = parts.floats()
            gates = [gates[0] + floats["ratio"], gates[1] + target, gates[2] + 1]
            progress.update(step, floats | {"target": target, "acc": float(parts.correct) / len(idx)})
            if step % eval_every == 0 or step == total:
                span, gates = [g / max(1, gates[2]) for g in gates[:2]], [0.0, 0.0, 0]  # saved state: a new span
                if dist.main:
                    metrics = _evaluation(model, data.val, cfg, eval_mode)
                    metrics["step"], metrics["target"] = step, target
                    if not cfg.no_trim:
                        metrics["train_ratio_mean"], metrics["train_target_mean"] = span
                    history.append(metrics)
                    progress.log(_eval_line(metrics, eval_mode))
                    eligible = cfg.no_trim or cfg.curriculum_done(step, total)
                    if eligible and (best is None or _rank(metrics) > _rank(best)):
                        best = {k: metrics[k] for k in ("step", "val_accuracy", "val_ratio_mean", "val_closest_p1")
                                if k in metrics}
                        save_best(step, metrics)
                    save_checkpoint(model, last, force=True, train_state=train_state(step))
                barrier(dist)
        if dist.main:
            save_checkpoint(model, last, force=True, train_state=train_state(step))
            if best is None and not interrupted:  # the curriculum never finished: keep the final model
                final = history[-1] if history else {}
                best = {"step": step, "val_accuracy": final.get("val_accuracy"),
                        "val_ratio_mean": final.get("val_ratio_mean")}
                save_best(step, final)
    barrier(dist)
    return TrainResult(out, last, step, total, interrupted, best, history, earlier + time.perf_counter() - t0, cfg)


def _evaluation(model: MeterModel, split, cfg: TrainConfig, mode: str) -> dict[str, Any]:
    margin = cfg.decision_margin > 0 and mode != "off"
    res = evaluate(model, split, modes=(mode,) if mode == "off" else ("off", mode), samples=cfg.eval_samples,
                   seed=cfg.seed, decisions=margin)
    r = res[mode]["flops_ratio"]
    out = {"val_accuracy": res[mode]["accuracy"], "val_accuracy_full": res["off"]["accuracy"],
           "val_ratio_mean": r["mean"], "val_ratio_std": r["std"], "val_ratio_p10": r["p10"],
           "val_ratio_p90": r["p90"]}
    if margin and "decisions" in res[mode]:
        out["val_closest_p1"] = res[mode]["decisions"]["relative"]["p1"]
    return out


RATIO_TOLERANCE = 0.05  # how far a trained checkpoint's mean FLOPs ratio may land from --target-ratio unremarked


def budget_warning(result: TrainResult) -> str | None:
    """One line when a SmartTrim run's best checkpoint misses its FLOPs budget in `prune` mode by more than
    RATIO_TOLERANCE, else None. The ratio term steers the training gates (stochastic Gumbel-sigmoid); when many
    gate logits sit near the threshold the noise keeps tokens the deterministic gate drops (or the reverse), and
    the two ratios part. `trimkit calibrate budget` shifts the thresholds to the budget without retraining."""
    b, cfg = result.best or {}, result.config
    ratio = b.get("val_ratio_mean")
    if cfg is None or cfg.no_trim or ratio is None or abs(ratio - cfg.target_ratio) <= RATIO_TOLERANCE:
        return None
    at = next((h for h in result.history if h.get("step") == b.get("step")), {})
    gates, steered = at.get("train_ratio_mean"), at.get("train_target_mean")
    why = ""
    if gates is not None and steered is not None and abs(gates - steered) <= RATIO_TOLERANCE:
        why = (f" while the training gates before it averaged {gates:.3f} against their curriculum target "
               f"{steered:.3f}: likely many gate logits near the threshold, where the Gumbel noise decides")
    command = shlex.join(["trimkit", "calibrate", "budget", str(result.out), "--data", cfg.data,
                          "--target", f"{cfg.target_ratio:g}", "--seed", str(cfg.seed)])
    return (f"warning: the best checkpoint's mean FLOPs ratio in prune mode is {ratio:.3f}, "
            f"off --target-ratio {cfg.target_ratio:g} by more than {RATIO_TOLERANCE}{why}; "
            f"`{command} --out OUT` moves the thresholds to the budget without retraining")


def _rank(m: dict[str, Any]) -> tuple[float, float]:
    """Checkpoint order: validation accuracy, then (decision-margin runs) the closest-decision p1."""
    return m["val_accuracy"], m.get("val_closest_p1") or 0.0


def _eval_line(m: dict, mode: str) -> str:
    s = f"eval @ step {m['step']}: val acc ({mode}) {100 * m['val_accuracy']:.2f}%"
    if mode != "off":
        s += (f", full {100 * m['val_accuracy_full']:.2f}%, FLOPs ratio {m['val_ratio_mean']:.3f} "
              f"± {m['val_ratio_std']:.3f} (p10 {m['val_ratio_p10']:.3f}, p90 {m['val_ratio_p90']:.3f}), "
              f"target {m['target']:.3f}")
        if m.get("train_ratio_mean") is not None:
            s += f", training gates {m['train_ratio_mean']:.3f} (their target {m['train_target_mean']:.3f})"
    if m.get("val_closest_p1") is not None:
        s += f", closest decision p1 {m['val_closest_p1']:.3g} of its scale"
    return s


class _Progress:
    """A Rich progress bar with the loss parts; silent when disabled (other ranks, --quiet)."""

    def __init__(self, console, total: int, start: int, enabled: bool) -> None:
        self.enabled = enabled
        self.console = console
        self.total, self.start = total, start
        self._bar = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=self.console)
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, completed=self.start, info="")
        return self

    def update(self, step: int, f: dict[str, float]) -> None:
        if self._bar is not None:
            info = (f"loss {f['loss']:.3f} kl {f['kl']:.3f} "
                    f"ratio {f['ratio']:.3f}→{f['target']:.3f} acc {100 * f['acc']:.0f}%")
            info += f" margin {f['margin']:.4f}" if f.get("margin") else ""
            self._bar.update(self._task, completed=step, info=info)

    def log(self, line: str) -> None:
        if self._bar is not None:
            self._bar.console.print(line)
        elif self.console is not None:
            self.console.print(line)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
