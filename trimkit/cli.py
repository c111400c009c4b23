"""The `trimkit` command: thin Typer wiring; every command calls the library and prints.

Known errors (`TrimkitError`) become one line on stderr and their exit code;
set TRIMKIT_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from .config import (
    FREEZE_CHOICES,
    INT8_ACTIVATIONS,
    INT8_METHODS,
    INT8_SCOPES,
    PRETRAIN_TASKS,
    SMOOTH_WHERE,
    TOKEN_MODALITIES,
    TRAIN_PRECISIONS,
    TrainConfig,
)
from .contract import DEFAULT_OPSET
from .errors import Interrupted, TrimkitError

__all__ = ["app", "main"]

_TRAIN = TrainConfig()  # `trimkit train` option defaults are the training settings' own

app = typer.Typer(
    name="trimkit",
    help="SmartTrim adaptive pruning for vision-language models: train, export (ONNX/TensorRT), verify.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _choices(name: str, *values: str) -> type[enum.Enum]:
    """A str enum whose members are their values (Typer shows them as the option's choices)."""
    return enum.Enum(name, [(v, v) for v in values], type=str)


ExportFormat = _choices("ExportFormat", "onnx", "trt", "openvino", "triton")
TritonBackend = _choices("TritonBackend", "onnxruntime", "tensorrt", "openvino")
ExportMode = _choices("ExportMode", "adaptive", "static", "full")
ExportPrecision = _choices("ExportPrecision", "fp32", "fp16")
HeadImpl = _choices("HeadImpl", "auto", "mask", "gather")
Layout = _choices("Layout", "packed", "padded")
Preset = _choices("Preset", "tiny", "small", "base")
TrimTokens = _choices("TrimTokens", *TOKEN_MODALITIES)
Freeze = _choices("Freeze", *FREEZE_CHOICES)
TrainPrecision = _choices("TrainPrecision", *TRAIN_PRECISIONS)
PretrainTask = _choices("PretrainTask", *PRETRAIN_TASKS)
Int8Activations = _choices("Int8Activations", *INT8_ACTIVATIONS)
Int8Method = _choices("Int8Method", *INT8_METHODS)
Int8Scope = _choices("Int8Scope", *INT8_SCOPES)
SmoothWhere = _choices("SmoothWhere", *SMOOTH_WHERE)
Stem = _choices("Stem", "patch", "conv")
MeterTask = _choices("MeterTask", "vqa", "itm", "nlvr2")  # nlvr2 is refused with the reason, not hidden


OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Where to write (atomic; see --force).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
DataOpt = Annotated[str, typer.Option("--data", help="Dataset: easyvqa, shapes or FILE.jsonl.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
PoolProductOpt = Annotated[bool, typer.Option(
    "--pool-product", help="The classifier also reads the product of the two pooled [CLS] states (bilinear "
    "pooling): yes/no questions that compare a named attribute with the image are learned far sooner.")]


def _console():
    from rich.console import Console

    return Console()


@contextlib.contextmanager
def _working(console, what: str):
    """A spinner with the elapsed time under a long step without a count (a trace, an engine build); log lines
    print above it, and it leaves nothing behind (nor draws anything when the output is not a terminal)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn(what), TimeElapsedColumn(), console=console, transient=True) as prog:
        prog.add_task(what, total=None)
        yield


def _write_json(path: Path | None, data) -> None:
    """--json FILE: the results as indented JSON, written atomically (nothing when path is None)."""
    if path is not None:
        from .fileio import atomic_write

        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2)), force=True)


def _positive(value: float | int | None) -> float | int | None:
    """Counts, rates and sizes: checked when the option is parsed (0, negatives and NaN are one usage line)."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise typer.BadParameter(f"must be positive (a finite number > 0), got {value}")
    return value


HeadsBatchOpt = Annotated[int | None, typer.Option(
    "--heads-batch", help="The serving batch whose head keep rates `export --heads auto` plans with (default: the "
                          "checkpoint's, 8 unless planned otherwise; 1: each sample alone).", callback=_positive)]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"trimkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool | None, typer.Option("--version", callback=_version_callback, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """SmartTrim adaptive pruning for vision-language models."""


@app.command()
def init(
    out: OutOpt,
    preset: Annotated[Preset, typer.Option("--preset", help="Model size.")] = Preset.tiny,
    data: DataOpt = "easyvqa",
    stem: Annotated[Stem | None, typer.Option(
        "--stem", help="Image stem: patch (ViT linear patch embedding) or conv (early convolutions); "
                       "default: the preset's.")] = None,
    pool_product: PoolProductOpt = False,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
) -> None:
    """Create a fresh model (+ trimmers, all keeping) sized for a dataset's answers and words."""
    from .checkpoint import save_checkpoint
    from .factory import new_model
    from .fileio import check_writable

    check_writable(out, force=force)
    model = new_model(preset.value, data, seed=seed, pool_product=pool_product,
                      **({"stem": stem.value} if stem else {}))
    save_checkpoint(model, out, force=force)
    n = sum(p.numel() for p in model.parameters())
    n_trim = sum(p.numel() for p in model.trimmer_parameters())
    typer.echo(f"wrote {out}: preset {preset.value} ({model.config.stem} stem), {n:,} parameters "
               f"({n_trim:,} in trimmers), "
               f"{model.config.num_labels} labels, {model.config.vocab_size} words")


@app.command("import")
def import_cmd(
    out: OutOpt,
    source: Annotated[Path | None, typer.Argument(
        help="A BLIP directory (BlipForQuestionAnswering / BlipForImageTextRetrieval), or a METER checkpoint file "
             "(.ckpt); or use --vision/--text.")] = None,
    vision: Annotated[Path | None, typer.Option(
        "--vision", help="Image encoder: a Hugging Face ViT or DINOv2 directory, or a DINOv2 .onnx export.")] = None,
    text: Annotated[Path | None, typer.Option("--text", help="Text encoder: a Hugging Face BERT-family directory.")] = None,
    data: DataOpt = "easyvqa",
    fusion_layers: Annotated[int, typer.Option("--fusion-layers", help="New co-attention fusion layers (M).")] = 2,
    image_size: Annotated[int | None, typer.Option(
        "--image-size", help="Input image size (position embeddings are resampled); default: the encoder's.")] = None,
    max_text_len: Annotated[int, typer.Option("--max-text-len", help="Text positions kept (incl. [CLS]).")] = 40,
    fusion_hidden: Annotated[int | None, typer.Option(
        "--fusion-hidden", help="Fusion width; default: the image encoder's.")] = None,
    fusion_heads: Annotated[int | None, typer.Option(
        "--fusion-heads", help="Fusion heads; default: the image encoder's.")] = None,
    pool_product: PoolProductOpt = False,
    tokenizer: Annotated[Path | None, typer.Option(
        "--tokenizer", help="METER: RoBERTa's tokenizer directory (vocab.json + merges.txt).")] = None,
    labels: Annotated[Path | None, typer.Option(
        "--labels", help="METER VQA: the checkpoint's answers, one per line (without it: a new answer layer over "
                         "--data's answers).")] = None,
    task: Annotated[MeterTask, typer.Option("--task", help="METER: which head to import.")] = MeterTask.vqa,
    head_dim: Annotated[int, typer.Option("--head-dim", help="METER: attention head size (heads = width / it).")] = 64,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
) -> None:
    """Pretrained backbone -> trimkit checkpoint with trimmers attached (all keeping): BLIP from one directory,
    a METER checkpoint file, or METER-style: an image encoder + a text encoder + new co-attention fusion layers."""
    from .checkpoint import save_checkpoint
    from .fileio import check_writable
    from .pretrained import import_model

    check_writable(out, force=force)
    model = import_model(source, vision=vision, text=text, data=data, fusion_layers=fusion_layers,
                         image_size=image_size, max_text_len=max_text_len, fusion_hidden=fusion_hidden,
                         fusion_heads=fusion_heads, pool_product=pool_product, seed=seed, tokenizer=tokenizer,
                         task=task.value, labels=labels, head_dim=head_dim)
    save_checkpoint(model, out, force=force)
    c = model.config
    v, t = c.encoder(0), c.encoder(1)
    n = sum(p.numel() for p in model.parameters())
    typer.echo(f"wrote {out}: {model.meta['imported']['vision']['family']} ({v.layers} layers, {v.hidden_size} wide, "
               f"{c.image_size}px / {c.patch_size}) + {model.meta['imported']['text']['family']} ({t.layers} layers, "
               f"{t.hidden_size} wide, {model.meta['imported']['text']['tokenizer']} tokenizer) + {c.fusion_layers} "
               f"fusion layers; {n:,} parameters, {c.num_labels} labels")
    if "meter" in model.meta["imported"]:
        m = model.meta["imported"]["meter"]
        typer.echo(f"  METER {m['task']} head; answers: {m['answers']}; {m['unused_keys']} unused checkpoint tensors")


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A trimkit checkpoint (.pt) or an ONNX file (.onnx).")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the description as JSON.")] = None,
    text_len: Annotated[int | None, typer.Option("--text-len", help="Text length for the FLOPs table.")] = None,
) -> None:
    """Show what a checkpoint or an ONNX file holds."""
    from .inspect import describe
    from .report.tables import render_description

    info = describe(path, text_len=text_len)
    render_description(info, _console())
    _write_json(json_out, info)


@app.command()
def train(
    ctx: typer.Context,
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint to start from (with --resume: a .last.pt).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Best checkpoint; the latest state goes to <stem>.last.pt.")] = None,
    data: DataOpt = _TRAIN.data,
    no_trim: Annotated[bool, typer.Option("--no-trim", help="Fine-tune the backbone only (trimmers off).")] = _TRAIN.no_trim,
    target_ratio: Annotated[float, typer.Option("--target-ratio", help="Final FLOPs ratio target.")] = _TRAIN.target_ratio,
    distill_weight: Annotated[float, typer.Option("--distill-weight", help="lambda_SD: KL(full || trimmed).")] = _TRAIN.distill_weight,
    ratio_weight: Annotated[float, typer.Option("--ratio-weight", help="lambda_R: (ratio - target)^2.")] = _TRAIN.ratio_weight,
    full_task_weight: Annotated[float, typer.Option("--full-task-weight", help="alpha: CE of the untrimmed pass.")] = _TRAIN.full_task_weight,
    tau: Annotated[float, typer.Option("--tau", help="Gumbel-sigmoid temperature.")] = _TRAIN.tau,
    warmup_frac: Annotated[float, typer.Option("--warmup-frac", help="Curriculum ramp 1.0 -> target over this fraction.")] = _TRAIN.warmup_frac,
    no_distill: Annotated[bool, typer.Option("--no-distill", help="Ablation: no self-distillation.")] = _TRAIN.no_distill,
    no_curriculum: Annotated[bool, typer.Option("--no-curriculum", help="Ablation: no stable init, no linear scheduler.")] = _TRAIN.no_curriculum,
    local_only: Annotated[bool, typer.Option("--local-only", help="Ablation: local token scores only.")] = _TRAIN.local_only,
    decision_margin: Annotated[float, typer.Option(
        "--decision-margin", help="M > 0: penalize gate decisions within M logits of the threshold (the ones "
        "int8/fp16 exports flip); 0 = off.")] = _TRAIN.decision_margin,
    margin_weight: Annotated[float, typer.Option("--margin-weight", help="Weight of the --decision-margin term.")] = _TRAIN.margin_weight,
    relative_margin: Annotated[float, typer.Option(
        "--relative-margin", help="With --decision-margin: each decision also this fraction of its logit's scale "
        "(the sum of the absolute values of the terms it adds up) from the threshold.")] = _TRAIN.relative_margin,
    trim_tokens: Annotated[TrimTokens, typer.Option(
        "--trim-tokens", help="Whose tokens are trimmed (heads are trimmed in both streams).")] = TrimTokens(_TRAIN.trim_tokens),
    freeze: Annotated[Freeze, typer.Option(
        "--freeze", help="Encoders whose weights stay fixed (e.g. imported pretrained ones): cheaper steps.")] = Freeze(_TRAIN.freeze),
    precision: Annotated[TrainPrecision, typer.Option(
        "--precision", help="bf16: bfloat16 autocast in the training passes (fp32 weights and losses); "
        "~1.6x faster on CPUs with AVX512-BF16/AMX, slower without.")] = TrainPrecision(_TRAIN.precision),
    epochs: Annotated[float, typer.Option("--epochs", help="Epochs (ignored with --steps).")] = _TRAIN.epochs,
    steps: Annotated[int | None, typer.Option("--steps", help="Total optimizer steps.")] = _TRAIN.steps,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Global batch size.")] = _TRAIN.batch_size,
    questions_per_image: Annotated[int, typer.Option(
        "--questions-per-image", help="Batch up to K questions of one image together; the untrimmed passes then "
        "encode each image once (faster; 1 = plain shuffle).")] = _TRAIN.questions_per_image,
    lr: Annotated[float, typer.Option("--lr", help="Backbone peak learning rate.", callback=_positive)] = _TRAIN.lr,
    trimmer_lr: Annotated[float, typer.Option("--trimmer-lr", help="Trimmer peak learning rate.", callback=_positive)] = _TRAIN.trimmer_lr,
    eval_every: Annotated[int | None, typer.Option("--eval-every", help="Steps between evaluations (default: each epoch).")] = _TRAIN.eval_every,
    eval_samples: Annotated[int | None, typer.Option("--eval-samples", help="Validation questions per evaluation.")] = _TRAIN.eval_samples,
    seed: SeedOpt = _TRAIN.seed,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a run from its .last.pt, bit for bit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    force: ForceOpt = False,
) -> None:
    """Fine-tune the backbone (--no-trim) or train SmartTrim trimmers with self-distillation and a curriculum."""
    from .train import train as run_train
    from .train.loop import budget_warning

    if out is None and not resume:
        raise typer.BadParameter("--out is required (except with --resume)", param_hint="--out")
    try:
        cfg = TrainConfig(data=data, out=str(out) if out else "", epochs=epochs, steps=steps, batch_size=batch_size,
                          questions_per_image=questions_per_image, lr=lr, trimmer_lr=trimmer_lr, seed=seed, eval_every=eval_every, eval_samples=eval_samples,
                          no_trim=no_trim, target_ratio=target_ratio, full_task_weight=full_task_weight,
                          distill_weight=distill_weight, ratio_weight=ratio_weight, tau=tau, warmup_frac=warmup_frac,
                          no_distill=no_distill, no_curriculum=no_curriculum, local_only=local_only,
                          decision_margin=decision_margin, margin_weight=margin_weight,
                          relative_margin=relative_margin, trim_tokens=trim_tokens.value, freeze=freeze.value,
                          precision=precision.value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    # the options typed on the command line (Typer's bundled click: compare the source by name)
    given = {name for name in cfg.to_dict() if name in ctx.params
             and getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}
    result = run_train(ckpt, cfg, resume=resume, given=given, force=force, console=_console(),
                       show_progress=not quiet)
    import os as _os

    if _os.environ.get("RANK", "0") != "0":
        return
    if result.interrupted:
        typer.echo(f"stopped at step {result.steps_done}/{result.total_steps}; latest state in {result.last}; "
                   f"continue with: trimkit train {result.last} --resume")
        raise typer.Exit(130)
    b = result.best or {}
    acc = b.get("val_accuracy")
    typer.echo(f"done: {result.steps_done} steps in {result.seconds:.0f} s; best {result.out} "
               f"(step {b.get('step')}, val acc {100 * acc:.2f}%, FLOPs ratio {b.get('val_ratio_mean', 1.0):.3f}); "
               f"latest {result.last}" if acc is not None else f"done: {result.steps_done} steps; {result.out}")
    warning = budget_warning(result)
    if warning:
        typer.echo(warning, err=True)


@app.command("pretrain")
def pretrain_cmd(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint to start from (e.g. from trimkit init).")],
    out: OutOpt,
    task: Annotated[PretrainTask, typer.Option(
        "--task", help="tokens: the vision encoder names each patch token's object; match: image-text matching "
                       "(does a short text name an object in the image?) for the whole backbone.")] = PretrainTask.tokens,
    data: Annotated[str, typer.Option("--data", help="easyvqa or shapes (they have per-object labels).")] = "easyvqa",
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps.")] = 600,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per step.")] = 64,
    lr: Annotated[float | None, typer.Option("--lr", callback=_positive, help="Peak learning rate (warm-up, cosine decay); "
                                                          "default 1e-3 (tokens), 5e-4 (match).")] = None,
    precision: Annotated[TrainPrecision, typer.Option("--precision", help="bf16: bfloat16 autocast.")] = TrainPrecision.fp32,
    seed: SeedOpt = 0,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    force: ForceOpt = False,
) -> None:
    """Pre-train before `trimkit train --no-trim`, as real VLMs come pretrained: the image encoder (--task
    tokens), then image-text matching (--task match)."""
    from .train.pretrain import pretrain

    info = pretrain(ckpt, out, task=task.value, data=data, steps=steps, seed=seed, batch_size=batch_size, lr=lr,
                    precision=precision.value, force=force, console=_console(), show_progress=not quiet)
    last = ", ".join(f"{k.replace('_', ' ')} {100 * v:.1f}%" for k, v in info["curve"][-1].items()
                     if k not in ("step", "loss"))
    typer.echo(f"wrote {out}: {task.value}, {steps} steps on {info['train_images']} {data} images; "
               f"held-out {info['held_out_images']} images: {last}")


@app.command("eval")
def eval_cmd(
    ckpt: Annotated[Path, typer.Argument(help="A trimkit checkpoint.")],
    data: DataOpt = "easyvqa",
    split: Annotated[str, typer.Option("--split", help="train, val or test.")] = "test",
    samples: Annotated[int | None, typer.Option("--samples", help="Evaluate a seeded subset of N questions.", callback=_positive)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 256,
    seed: SeedOpt = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON.")] = None,
) -> None:
    """Accuracy in each trim mode, FLOPs ratio mean/p10/p90 and kept tokens per layer."""
    from .evaluate import evaluate_checkpoint
    from .report.tables import render_eval

    report = evaluate_checkpoint(ckpt, data, split=split, samples=samples, batch_size=batch_size, seed=seed)
    render_eval(report, _console())
    _write_json(json_out, report)


@app.command()
def export(
    source: Annotated[Path, typer.Argument(help="A checkpoint (or, for trt/openvino/triton, a trimkit .onnx file; "
                                                "for triton also a .plan or .xml artifact).")],
    out: OutOpt,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="onnx, trt (TensorRT engine + manifest), openvino (IR "
                                                               ".xml + .bin + manifest) or triton (a model repository "
                                                               "folder).")] = ExportFormat.onnx,
    mode: Annotated[ExportMode, typer.Option("--mode", help="adaptive (data-dependent k), static (calibrated k) or full.")] = ExportMode.adaptive,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset, 18-25 (20 and up: one Gelu node).")] = DEFAULT_OPSET,
    precision: Annotated[ExportPrecision, typer.Option("--precision", help="fp16: an fp16 graph with fp32 inputs/outputs.")] = ExportPrecision.fp32,
    keep_ratios: Annotated[str | None, typer.Option("--keep-ratios", help="static mode: 'v,t;v,t;...' per trimmed layer (default: calibrated).")] = None,
    heads: Annotated[HeadImpl, typer.Option("--heads", help="Head pruning: gather the kept heads' weight slices "
                                                            "(once per batch, the union of its choices, when packed; "
                                                            "per sample when padded), mask pruned heads, or auto "
                                                            "(default): per attention module, gather where the "
                                                            "checkpoint's measured head keep rate says it pays "
                                                            "(docs/design.md).")] = HeadImpl.auto,
    layout: Annotated[Layout, typer.Option("--layout", help="adaptive: packed (token-wise work on the batch's kept tokens "
                                                            "only; default) or padded (every sample at the batch's "
                                                            "largest keep count; static shapes per layer).")] = Layout.packed,
    ort_optimize: Annotated[bool, typer.Option("--ort-optimize", help="Write an ONNX Runtime-optimized graph (CPU).")] = False,
    profile: Annotated[list[str] | None, typer.Option("--profile", help="trt: NAME=min:opt:max (batch, text); forms one profile.")] = None,
    profile_set: Annotated[list[str] | None, typer.Option("--profile-set", help="trt: one more profile, 'batch=1:1:1,text=2:8:16'.")] = None,
    timing_cache: Annotated[Path | None, typer.Option("--timing-cache", help="trt: timing cache file, reused and updated.")] = None,
    onnx_out: Annotated[Path | None, typer.Option("--onnx-out", help="trt: keep the intermediate ONNX here.")] = None,
    workspace: Annotated[float, typer.Option("--workspace", help="trt: builder workspace, GiB.")] = 4.0,
    backend: Annotated[TritonBackend, typer.Option("--backend", help="triton: the runtime serving the model.")] = TritonBackend.onnxruntime,
    max_batch: Annotated[int | None, typer.Option("--max-batch", help="triton: max_batch_size (default 8; tensorrt: the profiles' largest batch).")] = None,
    instance_count: Annotated[int, typer.Option("--instance-count", help="triton: model instances.")] = 1,
    force: ForceOpt = False,
) -> None:
    """Export the model with its adaptive pruning: ONNX (TopK/Gather, dynamic batch and text length) or TensorRT."""
    console = _console()

    def log(msg: str) -> None:
        console.print(msg)

    if fmt is not ExportFormat.triton and (max_batch is not None or instance_count != 1 or
                                           backend is not TritonBackend.onnxruntime):
        raise typer.BadParameter("--backend/--max-batch/--instance-count go with --format triton")
    graph_options = {"--mode": mode is not ExportMode.adaptive, "--precision": precision is not ExportPrecision.fp32,
                     "--heads": heads is not HeadImpl.auto, "--layout": layout is not Layout.packed,
                     "--keep-ratios": keep_ratios is not None, "--opset": opset != DEFAULT_OPSET}
    given = [name for name, changed in graph_options.items() if changed]
    if source.suffix in (".onnx", ".xml", ".plan", ".engine", ".trt") and given:
        raise typer.BadParameter(f"{', '.join(given)} shape a graph exported from a checkpoint; {source.name} is "
                                 "already exported (export the checkpoint again with them)")
    if layout is not Layout.packed and mode is not ExportMode.adaptive:
        raise typer.BadParameter(f"--layout applies to --mode adaptive (a {mode.value} graph has one layout)")
    if fmt is ExportFormat.triton and (onnx_out or workspace != 4.0):
        raise typer.BadParameter("--onnx-out/--workspace go with --format trt")
    builds_engine = fmt is ExportFormat.trt or (backend is TritonBackend.tensorrt and
                                                source.suffix not in (".plan", ".engine", ".trt"))
    if not builds_engine and (profile or profile_set or timing_cache or onnx_out):
        raise typer.BadParameter("--profile/--profile-set/--timing-cache/--onnx-out go with a TensorRT engine build")
    def run() -> str:
        """The export; its one-line summary."""
        if fmt is ExportFormat.onnx:
            from .export.onnx import to_onnx

            res = to_onnx(source, out, mode=mode.value, opset=opset, precision=precision.value, keep_ratios=keep_ratios,
                          head_impl=heads.value, layout=layout.value, ort_optimize=ort_optimize, force=force, log=log)
            return (f"wrote {res.path} ({res.size_bytes / 2**20:.1f} MiB, {res.mode}, opset {res.opset}, "
                    f"{res.precision}), sha256 {res.sha256[:16]}…")
        if fmt is ExportFormat.openvino:
            from .export.openvino import to_openvino

            ov = to_openvino(source, out, mode=mode.value, precision=precision.value, opset=opset, keep_ratios=keep_ratios,
                             head_impl=heads.value, layout=layout.value, force=force, log=log)
            return f"wrote {ov.xml}, {ov.bin.name} and {ov.manifest.name} (OpenVINO {ov.openvino_version})"
        from .export.profiles import ProfileSpec
        from .export.trt import export_engine

        profiles = ProfileSpec(tuple(profile or ()), tuple(profile_set or ())) if builds_engine else None
        if fmt is ExportFormat.triton:
            from .export.triton import to_triton

            tri = to_triton(source, out, backend=backend.value, max_batch=max_batch, instance_count=instance_count,
                            mode=mode.value, precision=precision.value, opset=opset, keep_ratios=keep_ratios,
                            head_impl=heads.value, layout=layout.value, profiles=profiles, timing_cache=timing_cache,
                            force=force, log=log)
            return f"wrote {tri.config} and {tri.artifact} (Triton, {tri.backend}, max_batch_size {tri.max_batch})"
        res = export_engine(source, out, profiles=profiles, mode=mode.value, precision=precision.value, opset=opset,
                            keep_ratios=keep_ratios, head_impl=heads.value, layout=layout.value, onnx_out=onnx_out,
                            timing_cache=timing_cache, workspace_gib=workspace, force=force, log=log)
        return f"wrote {res.path} and {res.manifest} (TensorRT {res.tensorrt_version}, {res.seconds:.1f} s)"

    # the summary prints after the spinner ends: a plain write under a live spinner lands on its line
    with _working(console, f"exporting ({fmt.value})"):
        done = run()
    typer.echo(done)


def _int_list(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{name} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise typer.BadParameter(f"{name} takes positive integers, got {text!r}")
    return values


@app.command()
def verify(
    ckpt: Annotated[Path, typer.Argument(help="The checkpoint the artifact was exported from.")],
    artifact: Annotated[Path, typer.Argument(help="An .onnx file, or a TensorRT .plan with its manifest.")],
    data: Annotated[str, typer.Option("--data", help="easyvqa, shapes, FILE.jsonl or random.")] = "random",
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Speed: batch sizes.")] = "1,8",
    text_lens: Annotated[str, typer.Option("--text-lens", help="Speed: text lengths.")] = "8,16,32",
    samples: Annotated[int, typer.Option("--samples", help="Samples compared.", callback=_positive)] = 256,
    atol: Annotated[float | None, typer.Option("--atol", help="Logits tolerance (default 1e-4 fp32, 5e-2 fp16, 0.25 int8).")] = None,
    rtol: Annotated[float | None, typer.Option("--rtol", help="Relative tolerance (default 1e-3 fp32, 5e-2 fp16, 0.1 int8).")] = None,
    min_agreement: Annotated[float | None, typer.Option("--min-agreement", help="Argmax and keep_counts agreement (default 0.99; int8 0.98).")] = None,
    max_accuracy_drop: Annotated[float, typer.Option("--max-accuracy-drop", help="Points vs PyTorch full.")] = 1.0,
    min_speedup: Annotated[float | None, typer.Option("--min-speedup", help="Artifact vs the full export.")] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed runs per shape.", callback=_positive)] = 20,
    threads: Annotated[int | None, typer.Option("--threads", help="ONNX Runtime / OpenVINO inference threads.", callback=_positive)] = None,
    runtime: Annotated[str | None, typer.Option("--runtime", help="Runtimes to run the artifact on, comma-separated: "
                                                                  "onnxruntime, openvino (an .onnx file takes both; "
                                                                  "default: the artifact's own).")] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="OpenVINO inference precision: fp32 (default) "
                                                                      "or bf16 (its own tolerance).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="One record per check, machine-readable.")] = None,
    junit: Annotated[Path | None, typer.Option("--junit", help="JUnit XML, one testcase per check.")] = None,
    seed: SeedOpt = 0,
) -> None:
    """Prove an export against its checkpoint: numerics, accuracy, speed. Exit 1 if any check fails."""
    from .errors import CheckFailedError
    from .report.tables import render_verify
    from .verify import verify as run_verify
    from .verify import write_junit

    console = _console()
    report = run_verify(ckpt, artifact, data=data, samples=samples, batch_sizes=_int_list(batch_sizes, "--batch-sizes"),
                        text_lens=_int_list(text_lens, "--text-lens"), atol=atol, rtol=rtol,
                        min_agreement=min_agreement, max_accuracy_drop=max_accuracy_drop, min_speedup=min_speedup,
                        repeats=repeats, threads=threads, seed=seed, log=console.print,
                        runtimes=tuple(r.strip() for r in runtime.split(",") if r.strip()) if runtime else None,
                        precision=precision)
    render_verify(report, console)
    _write_json(json_out, report.to_dict())
    if junit is not None:
        write_junit(report, junit)
    if not report.passed:
        failed = ", ".join(c.name for c in report.checks if not c.passed)
        raise CheckFailedError(f"verify failed: {failed}")


@app.command()
def bench(
    ckpt: Annotated[Path, typer.Argument(help="A trained trimkit checkpoint.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder (report.md, bench.json, PNG plots).")],
    data: DataOpt = "easyvqa",
    targets: Annotated[str, typer.Option("--targets", help="FLOPs ratios (threshold offset, no retraining) and/or "
                                                           "'native'.")] = "native,0.7,0.5,0.35",
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Latency: batch sizes.")] = "1,8",
    text_lens: Annotated[str, typer.Option("--text-lens", help="Latency: text lengths.")] = "8,16,24",
    samples: Annotated[int, typer.Option("--samples", help="Test questions for accuracy.", callback=_positive)] = 1000,
    calib_samples: Annotated[int, typer.Option("--calib-samples", help="Validation questions for budgets.", callback=_positive)] = 500,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed runs per runtime and shape.", callback=_positive)] = 10,
    threads: Annotated[int | None, typer.Option("--threads", help="ONNX Runtime intra-op threads.", callback=_positive)] = None,
    static: Annotated[bool, typer.Option("--static/--no-static", help="Also static keep ratios at equal FLOPs.")] = True,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
) -> None:
    """Sweep trim targets, batch sizes and text lengths; write a Markdown report with PNG plots."""
    from rich.progress import Progress

    from .bench import bench as run_bench
    from .bench import parse_targets, total_steps

    t = parse_targets(targets)
    b, n = _int_list(batch_sizes, "--batch-sizes"), _int_list(text_lens, "--text-lens")
    console = _console()
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("bench", total=total_steps(t, b, n))
        res = run_bench(ckpt, out, data=data, targets=t, batch_sizes=b, text_lens=n, samples=samples,
                        calib_samples=calib_samples, repeats=repeats, threads=threads, static=static, seed=seed,
                        force=force, progress=lambda what, k: prog.update(task, advance=k, description=what))
    from .report.tables import render_bench

    render_bench(res, console)
    console.print(f"wrote {out}/report.md, bench.json and 3 plots in {res['seconds']:.0f} s")


def _figure_out(value: Path | None) -> Path | None:
    """--out of a figure: a suffix trimkit writes, checked when parsed (before the model loads)."""
    from .report.plots import check_figure_path

    if value is not None:
        try:
            check_figure_path(value)
        except TrimkitError as e:
            raise typer.BadParameter(str(e)) from None
    return value


@app.command()
def show(
    ckpt: Annotated[Path, typer.Argument(help="A trimkit checkpoint.")],
    image: Annotated[Path, typer.Argument(help="An image file.")],
    question: Annotated[str, typer.Argument(help="The question, in quotes.")],
    out: Annotated[Path, typer.Option("--out", "-o", callback=_figure_out,
                                      help="The figure: .png, .jpg, .pdf or .svg (atomic; see --force).")],
    force: ForceOpt = False,
) -> None:
    """Draw which image patches, words and heads each layer keeps, with the answer."""
    from .report.show import notes
    from .report.show import show as run_show

    ex = run_show(ckpt, image, question, out, force=force)
    typer.echo(f"{ex['answer']} ({100 * ex['probability']:.1f}%), FLOPs ratio {ex['flops_ratio']:.3f}; wrote {out}")
    for line in notes(ex):
        typer.echo(f"note: {line}")


calibrate_app = typer.Typer(help="Hit a compute budget without retraining; INT8 (Q/DQ) quantization.",
                            no_args_is_help=True)
app.add_typer(calibrate_app, name="calibrate")


@calibrate_app.command("budget")
def calibrate_budget_cmd(
    ckpt: Annotated[Path, typer.Argument(help="A trained trimkit checkpoint.")],
    target: Annotated[float, typer.Option("--target", help="Mean FLOPs ratio to reach.")],
    out: OutOpt,
    data: DataOpt = "easyvqa",
    samples: Annotated[int, typer.Option("--samples", help="Validation questions to calibrate on.")] = 1000,
    holdout: Annotated[int, typer.Option("--holdout", help="Test questions for before/after.")] = 2000,
    per_layer: Annotated[bool, typer.Option("--per-layer/--global", help="Per-layer offsets scaled by each layer's "
                                                                         "score spread, or one global offset.")] = False,
    heads_batch: HeadsBatchOpt = None,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
) -> None:
    """Shift the trimmers' thresholds to a FLOPs ratio; store matching static keep ratios."""
    from .calibration import calibrate_budget
    from .report.tables import render_budget

    console = _console()
    rec = calibrate_budget(ckpt, data, target, out, samples=samples, holdout=holdout, per_layer=per_layer,
                           heads_batch=heads_batch, seed=seed, force=force, log=console.print)
    render_budget(rec, console)
    console.print(f"wrote {out} (static keep ratios stored for `trimkit export --mode static`; head keep rates for "
                  f"`--heads auto` at batch {rec['heads_batch']})")


@calibrate_app.command("heads")
def calibrate_heads_cmd(
    ckpt: Annotated[Path, typer.Argument(help="A trained trimkit checkpoint.")],
    heads_batch: Annotated[int, typer.Option("--heads-batch", help="The serving batch to plan `export --heads auto` "
                                                                   "for (1: each sample alone).",
                                             callback=_positive)],
    out: OutOpt,
    data: DataOpt = "easyvqa",
    samples: Annotated[int, typer.Option("--samples", help="Validation questions to measure on.",
                                         callback=_positive)] = 1000,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
) -> None:
    """Re-plan which attention modules `export --heads auto` gathers, for another serving batch (thresholds kept)."""
    from .calibration import calibrate_heads
    from .report.tables import render_heads_plan

    console = _console()
    rec = calibrate_heads(ckpt, data, out, heads_batch=heads_batch, samples=samples, seed=seed, force=force,
                          log=console.print)
    render_heads_plan(rec, console)
    console.print(f"wrote {out}")


@calibrate_app.command("int8")
def calibrate_int8_cmd(
    onnx_file: Annotated[Path, typer.Argument(help="An fp32 trimkit ONNX export.")],
    ckpt: Annotated[Path, typer.Option("--ckpt", help="The checkpoint it was exported from.")],
    out: OutOpt,
    data: DataOpt = "easyvqa",
    samples: Annotated[int, typer.Option("--samples", help="Calibration questions (train split, seeded).")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    method: Annotated[Int8Method, typer.Option("--method", help="Activation range calibration.")] = Int8Method.minmax,
    per_channel: Annotated[bool, typer.Option("--per-channel", help="Per-output-channel weight scales.")] = False,
    activations: Annotated[Int8Activations, typer.Option(
        "--activations", help="int8: symmetric (TensorRT and ONNX Runtime); uint8: asymmetric, ONNX Runtime CPU "
                              "only (its native x86 form).")] = Int8Activations.int8,
    scope: Annotated[Int8Scope, typer.Option(
        "--scope", help="Which matmuls: all, mlp (feed-forward only: fewer flipped pruning decisions) or "
                        "attention.")] = Int8Scope.all,
    smooth: Annotated[float | None, typer.Option(
        "--smooth", help="SmoothQuant alpha in (0, 1]: move this share of the activations' channel range into the "
                         "per-channel weight scales first (fewer flipped pruning decisions).")] = None,
    smooth_where: Annotated[SmoothWhere, typer.Option(
        "--smooth-where", help="all: every quantized matmul input (a Mul where it cannot fold); layernorm: only "
                               "inputs that fold into a LayerNorm (no run-time cost).")] = SmoothWhere.all,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
) -> None:
    """Static INT8 Q/DQ quantization of the backbone's matmuls; the trimmer path stays float."""
    from .calibration.int8 import quantize_int8

    console = _console()
    res = quantize_int8(onnx_file, out, ckpt=ckpt, data=data, samples=samples, batch_size=batch_size,
                        method=method.value, per_channel=per_channel, activations=activations.value,
                        scope=scope.value, smooth=smooth, smooth_where=smooth_where.value, seed=seed, force=force,
                        log=console.print)
    console.print(f"wrote {res.path}: {res.quantized_nodes} matmuls quantized, {res.skipped_trimmer_nodes} trimmer "
                  f"matmuls kept float, {res.op_counts.get('QuantizeLinear', 0)} QuantizeLinear / "
                  f"{res.op_counts.get('DequantizeLinear', 0)} DequantizeLinear ({res.seconds:.1f} s)")


class _CtrlC:
    """Notes a Ctrl-C (SIGINT) while a command runs, then raises KeyboardInterrupt as Python's own handler
    does. Code on the way may turn the interrupt into another error (an extension module whose import it
    cut short raises ImportError, which reads as "not installed"; a library that catches too broadly);
    knowing that Ctrl-C was pressed, the CLI reports the interrupt, not that error. A command with its own
    handler (train) replaces this one while it runs and puts it back."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous = None
        try:
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when SIGINT is ignored
                self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: its signals are not ours to handle
            pass

    def _handle(self, signum, frame) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


INTERRUPTED = "trimkit: interrupted"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (known errors and usage errors -> one line on stderr; Ctrl-C ->
    "interrupted", 130)."""
    ctrl_c = _CtrlC()
    try:
        rc = _run(argv, ctrl_c)
    finally:
        ctrl_c.restore()
    return rc


def _run(argv: list[str] | None, ctrl_c: _CtrlC) -> int:
    debug = os.environ.get("TRIMKIT_DEBUG") == "1"
    try:
        rc = app(args=argv, prog_name="trimkit", standalone_mode=False)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:  # Typer turns it into exit code 130; one raised past it lands here
        if debug:
            raise
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except TrimkitError as e:
        if debug:
            raise
        if isinstance(e, Interrupted):  # a command that says what Ctrl-C left behind
            print(f"{INTERRUPTED}: {e}", file=sys.stderr)
            return e.exit_code
        if ctrl_c.pressed:  # whatever the error says, Ctrl-C caused it
            print(INTERRUPTED, file=sys.stderr)
            return 130
        print(f"trimkit: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # click's (Typer vendors its own copy: matched by class name, not by import)
        if ctrl_c.pressed or "Abort" in {c.__name__ for c in type(e).__mro__}:
            if debug:
                raise
            print(INTERRUPTED, file=sys.stderr)
            return 130
        kinds = {c.__name__ for c in type(e).__mro__}
        ctx = getattr(e, "ctx", None)
        if "NoArgsIsHelpError" in kinds:  # `trimkit` or `trimkit calibrate` alone: the help
            print(ctx.get_help() if ctx else e.format_message())
            return 2
        if "UsageError" in kinds:  # bad option values, unknown options and commands: one line, exit 2
            cmd = ctx.command_path if ctx else "trimkit"
            print(f"{cmd}: error: {e.format_message()} (see {cmd} --help)", file=sys.stderr)
            return 2
        if "ClickException" in kinds:
            print(f"trimkit: error: {e.format_message()}", file=sys.stderr)
            return e.exit_code
        raise
    rc = rc if isinstance(rc, int) else 0
    if ctrl_c.pressed and rc != 0:  # Typer's exit code 130 for Ctrl-C, silent; or a failure Ctrl-C caused
        print(INTERRUPTED, file=sys.stderr)
        return 130
    return rc


def entry() -> None:  # console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
