"""Helpers shared by the benchmark scripts: run a trimkit command once, keep results as JSON + Markdown,
time several variants interleaved."""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def trimkit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "trimkit.cli", *map(str, args)]


def run_stage(name: str, args: list[str], output: Path, log: Path, record: dict) -> None:
    """Run `trimkit ARGS` unless `output` exists; record the command and its duration. A training stage that
    was stopped (its `.last.pt` short of its total steps) is continued with `--resume` instead."""
    cmd = trimkit_cmd(*args)
    shown = "trimkit " + " ".join(shlex.quote(str(a).replace(f"{ROOT}/", "")) for a in args)
    record.setdefault("commands", {})[name] = shown
    unfinished = _unfinished_training(output)
    if unfinished is not None:
        cmd, shown = trimkit_cmd("train", unfinished, "--resume", "--quiet"), f"trimkit train {unfinished} --resume"
    elif output.exists():
        print(f"[skip] {name}: {output} exists", flush=True)
        if name not in record.get("seconds", {}) and "seconds" in (state := _train_state(output)):
            record.setdefault("seconds", {})[name] = round(state["seconds"], 1)
        return
    print(f"[run ] {name}: {shown}", flush=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {shown}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see {log}")
    # a training run's own wall time, across --resume sessions; else this command's
    seconds = _train_state(output).get("seconds", time.perf_counter() - t0)
    record.setdefault("seconds", {})[name] = round(seconds, 1)


def _train_state(output: Path) -> dict:
    """The train state in the `.last.pt` beside a `trimkit train` output ({} for other outputs)."""
    from trimkit.checkpoint import read_checkpoint
    from trimkit.train import last_path

    last = last_path(output)
    return (read_checkpoint(last).get("train_state") or {}) if output.suffix == ".pt" and last.exists() else {}


def _unfinished_training(output: Path) -> Path | None:
    """The `.last.pt` of a `trimkit train` run whose train state has not reached its total steps, else None."""
    from trimkit.train import last_path

    state = _train_state(output)
    return last_path(output) if state.get("step", 0) < state.get("total_steps", 0) else None


def pretrain_vision_stage(wd: Path, data: str, steps: int, opts: list[str], log: Path, record: dict) -> Path:
    """`trimkit pretrain-vision` from wd/init.pt (none when steps is 0). Returns the checkpoint the backbone
    starts from; `record_vision_pretrain` then records what the backbone really started from."""
    if not steps:
        return wd / "init.pt"
    start = wd / "init-vision.pt"
    run_stage("pretrain-vision", ["pretrain-vision", wd / "init.pt", "--data", data, "--steps", steps, "--out", start,
                                  "--quiet", *opts], start, log, record)
    return start


def record_vision_pretrain(backbone: Path, record: dict) -> None:
    """The vision pre-training the backbone checkpoint carries in its meta (if any), never a stale record."""
    from trimkit.checkpoint import read_checkpoint

    info = read_checkpoint(backbone)["meta"].get("vision_pretrain")
    if info:
        record["vision_pretrain"] = info
    else:
        record.pop("vision_pretrain", None)
        record.get("seconds", {}).pop("pretrain-vision", None)


def vision_pretrain_lines(info: dict | None) -> list[str]:
    """A results paragraph on the vision pre-training stage (none when there was none)."""
    if not info:
        return []
    last = info["curve"][-1]
    if info.get("data", "shapes") == "shapes":
        where = (f"{info.get('train_images', info.get('images')):,} scenes in no VQA split (generator seed "
                 f"{info['generator_seed']}); on {info.get('held_out_images', info.get('held_out'))} held-out scenes")
    else:
        where = (f"the {info['train_images']:,} images of the training part of the train split (labels from their "
                 f"training questions' answers); on the {info['held_out_images']} validation images")
    return [f"The backbone starts from a vision encoder pre-trained {info['steps']} steps (`trimkit pretrain-vision`) "
            f"to name what lies under each patch token (background or which colour × shape) on {where} it names "
            f"{100 * last['token_accuracy']:.1f}% of the tokens ({100 * last['object_token_accuracy']:.1f}% of "
            "those on objects).", ""]


def save_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def merge_save_json(path: Path, data: dict, merged_keys=("runs", "commands", "seconds")) -> dict:
    """Save `data`, keeping what other processes wrote to the same file meanwhile: under a lock, the dicts
    under `merged_keys` are merged with the file's (this process's entries win). Lets one benchmark run its
    stages in parallel processes (e.g. `--runs A` and `--runs B` on one core each). Returns the merged record."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        disk = load_json(path)
        merged = {**disk, **data}
        for key in merged_keys:
            merged[key] = {**disk.get(key, {}), **data.get(key, {})}
        save_json(path, merged)
    return merged


def reproduce_command(script: str, argv: list[str], drop: dict[str, bool]) -> str:
    """`python benchmarks/SCRIPT ARGV` without the options that only split the work across processes;
    drop maps each such option to whether it takes a value."""
    keep, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in drop:
            skip = drop[a]
        elif not any(a.startswith(f"{opt}=") for opt in drop):
            keep.append(a)
    return " ".join([f"python benchmarks/{script}", *keep])


def timing_args(ap: argparse.ArgumentParser, *, batches: int, repeats: int, workdir: str) -> None:
    """The options every timing benchmark takes."""
    ap.add_argument("--batches", type=int, default=batches, help="batches per variant per repeat")
    ap.add_argument("--repeats", type=int, default=repeats, help="interleaved repeats (the median is reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench" / workdir)


def time_interleaved(passes: dict[str, Callable[[], int]], repeats: int, console, label: str) -> dict[str, float]:
    """Median seconds per batch of each variant. A pass runs all of a variant's batches and returns how many;
    the variants take turns within every repeat, so machine noise hits them alike. One warm-up pass each."""
    from rich.progress import Progress

    for run in passes.values():
        run()
    times: dict[str, list[float]] = {v: [] for v in passes}
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(label, total=repeats * len(passes))
        for _ in range(repeats):
            for v, run in passes.items():
                t0 = time.perf_counter()
                n = run()
                times[v].append((time.perf_counter() - t0) / n)
                prog.advance(task)
    return {v: statistics.median(ts) for v, ts in times.items()}


def ort_pass(session, feeds: list[dict]) -> Callable[[], int]:
    """A `time_interleaved` pass: one ONNX Runtime session over its batches."""
    def run() -> int:
        for f in feeds:
            session.run(None, f)
        return len(feeds)
    return run
