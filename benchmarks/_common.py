"""Helpers shared by the benchmark scripts: run a trimkit command once, keep results as JSON + Markdown,
time several variants interleaved."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

from trimkit.runtime import timing

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def trimkit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "trimkit.cli", *map(str, args)]


def run_stage(name: str, args: list[str], output: Path, log: Path, record: dict) -> None:
    """Run `trimkit ARGS` unless `output` exists; record the command and its duration. A training stage that
    was stopped (its `.last.pt` short of its total steps) is continued with `--resume` instead."""
    from trimkit.train import last_path

    cmd = trimkit_cmd(*args)
    shown = "trimkit " + " ".join(shlex.quote(str(a).replace(f"{ROOT}/", "")) for a in args)
    record.setdefault("commands", {})[name] = shown
    state = _train_state(output)
    if state.get("step", 0) < state.get("total_steps", 0):  # stopped: continue it
        unfinished = last_path(output)
        cmd, shown = trimkit_cmd("train", unfinished, "--resume", "--quiet"), f"trimkit train {unfinished} --resume"
    elif output.exists():
        print(f"[skip] {name}: {output} exists", flush=True)
        if name not in record.get("seconds", {}) and "seconds" in state:
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


PRETRAIN_STAGES = {"tokens": "init-vision.pt", "match": "init-match.pt"}  # in order, each from the one before


def pretrain_stages(wd: Path, data: str, steps: dict[str, int], opts: list[str], log: Path, record: dict) -> Path:
    """`trimkit pretrain --task T` from wd/init.pt for each task with steps (tokens, then match). Returns the
    checkpoint the backbone starts from; `record_pretrain` then records what the backbone really started from."""
    start = wd / "init.pt"
    for task, name in PRETRAIN_STAGES.items():
        if steps.get(task):
            out = wd / name
            run_stage(f"pretrain-{task}", ["pretrain", start, "--task", task, "--data", data, "--steps", steps[task],
                                           "--out", out, "--quiet", *opts], out, log, record)
            start = out
    return start


def record_pretrain(backbone: Path, record: dict) -> None:
    """The pre-training stages the backbone checkpoint carries in its meta, never a stale record."""
    from trimkit.checkpoint import read_checkpoint
    from trimkit.train.pretrain import PRETRAIN_META

    meta = read_checkpoint(backbone)["meta"]
    for task, key in PRETRAIN_META.items():
        if meta.get(key):
            record[key] = meta[key]
        else:
            record.pop(key, None)
            record.get("seconds", {}).pop(f"pretrain-{task}", None)


def pretrain_seconds(record: dict) -> float:
    """Wall time of the pre-training stages the record's backbone had."""
    from trimkit.train.pretrain import PRETRAIN_META

    seconds = record.get("seconds", {})
    return sum(seconds.get(f"pretrain-{task}", 0.0) for task, key in PRETRAIN_META.items() if record.get(key))


def pretrain_lines(record: dict) -> list[str]:
    """A results paragraph on the pre-training stages (none when there were none)."""
    tokens, match = record.get("vision_pretrain"), record.get("match_pretrain")
    lines = []
    if tokens:
        last = tokens["curve"][-1]
        if tokens.get("data", "shapes") == "shapes":
            where = (f"{tokens.get('train_images', tokens.get('images')):,} scenes in no VQA split (generator seed "
                     f"{tokens['generator_seed']}); on {tokens.get('held_out_images', tokens.get('held_out'))} "
                     "held-out scenes")
        else:
            where = (f"the {tokens['train_images']:,} images of the training part of the train split (labels from "
                     f"their training questions); on the {tokens['held_out_images']} validation images")
        lines += [f"The backbone starts from a vision encoder pre-trained {tokens['steps']} steps to name what lies "
                  f"under each patch token (background or which colour × shape) on {where} it names "
                  f"{100 * last['token_accuracy']:.1f}% of the tokens ({100 * last['object_token_accuracy']:.1f}% "
                  "of those on objects).", ""]
    if match:
        last = match["curve"][-1]
        lines += [f"Then {match['steps']} steps of image-text matching (`trimkit pretrain --task match`: does "
                  "\"red\", \"circle\" or \"red circle\" name an object in the image? half do) train the whole "
                  f"backbone; on the held-out images it answers {100 * last['match_accuracy']:.1f}% right "
                  f"({100 * last['named_accuracy']:.1f}% of the texts naming an object, "
                  f"{100 * last['absent_accuracy']:.1f}% of the others).", ""]
    return lines


def rel_to_root(path: Path) -> str:
    """A path as results files record it: relative to the repository when inside it."""
    path = Path(path)
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


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
    return " ".join([f"python benchmarks/{script}", *map(shlex.quote, keep)])


def timing_args(ap: argparse.ArgumentParser, *, batches: int, repeats: int, workdir: str) -> None:
    """The options every timing benchmark takes."""
    ap.add_argument("--batches", type=int, default=batches, help="batches per variant per repeat")
    ap.add_argument("--repeats", type=int, default=repeats, help="interleaved repeats (the median is reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench" / workdir)


K = TypeVar("K", bound=Hashable)


def time_interleaved(passes: dict[K, Callable[[], int]], repeats: int, console, label: str) -> dict[K, float]:
    """Median seconds per batch of each variant (`trimkit.runtime.timing.time_interleaved`, with a progress bar).
    A pass runs all of a variant's batches and returns how many."""
    from rich.progress import Progress

    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(label, total=repeats * len(passes))
        times = timing.time_interleaved(passes, repeats, tick=lambda: prog.advance(task))
    return timing.median_seconds(times)


def ort_pass(session, feeds: list[dict]) -> Callable[[], int]:
    """A `time_interleaved` pass: one ONNX Runtime session over its batches."""
    def run() -> int:
        for f in feeds:
            session.run(None, f)
        return len(feeds)
    return run


def model_label(model) -> str:
    """What a checkpoint is, for a results heading: its preset, or the families it was imported from."""
    meta = model.meta
    if "preset" in meta:
        return meta["preset"]
    imported = meta.get("imported") or {}
    families = [imported[k]["family"] for k in ("vision", "text") if isinstance(imported.get(k), dict)]
    return "imported " + " + ".join(families) if families else "?"
