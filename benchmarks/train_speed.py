"""Training step time of the `small` preset on this CPU: fp32 vs `--precision bf16` (bfloat16 autocast).

Both step kinds `trimkit train` runs: the backbone step (`--no-trim`: one untrimmed pass) and the SmartTrim
step (trimmed pass + untrimmed teacher pass + backward), batch 64 of easy-VQA training questions, AdamW
step included. The four variants take turns within every repeat (medians). The loss of the first step
in both precisions is reported beside the times: bf16 changes rounding, not the objective.
Writes benchmarks/results/train_speed.{json,md}.

    python benchmarks/train_speed.py [--steps 5] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from _common import RESULTS, save_json, time_interleaved
from rich.console import Console
from rich.table import Table

from trimkit.data import load_dataset
from trimkit.factory import new_model
from trimkit.train import SmartTrimObjective, TrainConfig
from trimkit.trimmers import BatchNoise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per variant per repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    data = None
    passes, first_loss = {}, {}
    for kind, cfg in (("backbone", TrainConfig(no_trim=True)), ("smarttrim", TrainConfig(target_ratio=0.5))):
        for precision in ("fp32", "bf16"):
            model = new_model("small", "easyvqa", seed=0)
            if data is None:
                data = load_dataset("easyvqa", tokenizer=model.tokenizer, labels=model.labels,
                                    image_size=model.config.image_size, splits=("train",)).train
                batch = data.batch(torch.arange(args.batch_size))
            name = f"{kind}/{precision}"
            passes[name], first_loss[name] = _stepper(model, dataclasses.replace(cfg, precision=precision), batch,
                                                      args.steps)
    med = time_interleaved(passes, args.repeats, console, "training steps")
    rec = {"threads": args.threads, "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
           "step_ms": {k: 1000 * v for k, v in med.items()}, "first_loss": first_loss,
           "bf16_speedup": {k: med[f"{k}/fp32"] / med[f"{k}/bf16"] for k in ("backbone", "smarttrim")}}
    save_json(RESULTS / "train_speed.json", rec)
    write_markdown(rec, console)


def _stepper(model, cfg: TrainConfig, batch, steps: int):
    """A `time_interleaved` pass of `steps` optimizer steps, and the loss of a first step."""
    objective = SmartTrimObjective(model, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()

    def step() -> float:
        with cfg.autocast():
            parts = objective(*batch, target=cfg.target_ratio, noise=BatchNoise(0, batch[0].shape[0]))
        opt.zero_grad(set_to_none=True)
        parts.loss.backward()
        opt.step()
        return parts.loss.item()

    loss = step()

    def run() -> int:
        for _ in range(steps):
            step()
        return steps

    return run, loss


def write_markdown(rec: dict, console) -> None:
    lines = ["# Training step time on this CPU: fp32 vs bf16 autocast (`small` preset)", "",
             f"Batch {rec['batch_size']} of easy-VQA training questions, {rec['threads']} threads, {rec['steps']} "
             f"optimizer steps x {rec['repeats']} interleaved repeats, medians. Reproduce: "
             "`python benchmarks/train_speed.py`.", "",
             "| step | fp32 ms | bf16 ms | bf16 speedup | first loss fp32 | first loss bf16 |", "|---|---|---|---|---|---|"]
    table = Table(title="training step (ms)")
    for col in ("step", "fp32", "bf16", "speedup"):
        table.add_column(col, justify="right")
    for k, sp in rec["bf16_speedup"].items():
        a, b = rec["step_ms"][f"{k}/fp32"], rec["step_ms"][f"{k}/bf16"]
        lines.append(f"| {k} | {a:.0f} | {b:.0f} | {sp:.2f}× | {rec['first_loss'][f'{k}/fp32']:.4f} | "
                     f"{rec['first_loss'][f'{k}/bf16']:.4f} |")
        table.add_row(k, f"{a:.0f}", f"{b:.0f}", f"{sp:.2f}×")
    (RESULTS / "train_speed.md").write_text("\n".join(lines) + "\n")
    console.print(table)


if __name__ == "__main__":
    main()
