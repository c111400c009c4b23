"""A Triton Inference Server model repository around a trimkit artifact.

`repo/<name>/config.pbtxt` + `repo/<name>/1/model.onnx | model.plan | model.xml (+ .bin)` and the
artifact's manifest beside it. Inputs and outputs follow the ONNX contract with the batch axis left to
`max_batch_size` (-1 where an axis is dynamic: the text length); dynamic batching is on. Triton batches
only requests whose other dimensions agree, so clients that pad questions to one text length (the
model is batch invariant: padding is masked) get the most out of it. A TensorRT engine's optimization
profiles are listed on its instance group, and `max_batch_size` may not exceed what they take.

The model folder is assembled in a hidden temporary folder inside the repository and renamed into
place: a repository never holds a model without its config.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..contract import DEFAULT_OPSET, ENGINE_SUFFIXES
from ..errors import BadInputError, CheckFailedError
from ..fileio import sha256_file

__all__ = ["to_triton", "TritonExport", "render_config", "check_repository", "BACKENDS", "model_io"]

BACKENDS = ("onnxruntime", "tensorrt", "openvino")
_PLATFORM = {"onnxruntime": ("platform", "onnxruntime_onnx"), "tensorrt": ("platform", "tensorrt_plan"),
             "openvino": ("backend", "openvino")}
_FILE = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "openvino": "model.xml"}
_TYPE = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "float16": "TYPE_FP16"}
DEFAULT_MAX_BATCH = 8
QUEUE_DELAY_US = 500  # how long the dynamic batcher waits to fill a batch


@dataclass
class TritonExport:
    model_dir: Path
    config: Path
    artifact: Path
    backend: str
    max_batch: int
    io: dict[str, list[dict[str, Any]]]


def model_io(config) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs of a trimkit artifact without the batch axis (-1: dynamic text length)."""
    s, c = config.image_size, config.num_channels
    return {
        "input": [{"name": "pixel_values", "dtype": "float32", "dims": [c, s, s]},
                  {"name": "input_ids", "dtype": "int64", "dims": [-1]},
                  {"name": "attention_mask", "dtype": "int64", "dims": [-1]}],
        "output": [{"name": "logits", "dtype": "float32", "dims": [config.num_labels]},
                   {"name": "keep_counts", "dtype": "int64", "dims": [None, 2]}],  # None: trimmed layers, filled in
    }


def render_config(name: str, backend: str, io: dict[str, list[dict[str, Any]]], *, max_batch: int,
                  instance_count: int, profiles: list[int] | None = None, threads: int | None = None) -> str:
    """config.pbtxt text (protobuf text format of Triton's ModelConfig)."""
    key, value = _PLATFORM[backend]
    lines = [f'name: "{name}"', f'{key}: "{value}"', f"max_batch_size: {max_batch}"]
    if backend == "openvino":
        lines.append(f'default_model_filename: "{_FILE[backend]}"')
    for mode in ("input", "output"):
        lines.append(f"{mode} [")
        rows = []
        for t in io[mode]:
            label = ' label_filename: "labels.txt"' if t["name"] == "logits" else ""
            rows.append(f'  {{ name: "{t["name"]}" data_type: {_TYPE[t["dtype"]]} dims: [ '
                        f'{", ".join(str(d) for d in t["dims"])} ]{label} }}')
        lines.append(",\n".join(rows))
        lines.append("]")
    lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}")
    kind = "KIND_GPU" if backend == "tensorrt" else "KIND_CPU"
    group = f"instance_group [ {{ count: {instance_count} kind: {kind}"
    if profiles:
        group += " profile: [ " + ", ".join(f'"{p}"' for p in profiles) + " ]"
    lines.append(group + " } ]")
    if backend == "openvino":
        # fp32 inference: the CPU plugin would pick bf16 where the CPU has it and flip near-threshold decisions
        params = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            params["INFERENCE_NUM_THREADS"] = str(threads)
        for k, v in params.items():
            lines.append(f'parameters: {{ key: "{k}" value: {{ string_value: "{v}" }} }}')
    if backend == "onnxruntime" and threads:
        lines.append(f'parameters: {{ key: "intra_op_thread_count" value: {{ string_value: "{threads}" }} }}')
    return "\n".join(lines) + "\n"


def _model_name(source: Path, name: str | None) -> str:
    n = name or source.stem
    n = re.sub(r"[^A-Za-z0-9_.-]", "_", n)
    if not n or n.startswith("."):
        raise BadInputError(f"model name {n!r}: use letters, digits, '_', '-' or '.' (not first)")
    return n


def _engine_profiles(source: Path, profiles) -> list:
    """The profiles a TensorRT model will have: an engine's (from its manifest), or those `profiles` resolve to
    for the model a checkpoint or trimkit ONNX file holds (read for its config only)."""
    from ..checkpoint import read_checkpoint
    from ..config import ModelConfig
    from .manifest import read_manifest
    from .profiles import resolve_profiles
    from .trt import onnx_model_config

    if source.suffix in ENGINE_SUFFIXES:
        return read_manifest(source)["profiles"]
    if source.suffix == ".onnx":
        config = onnx_model_config(source)[0]
    else:
        try:
            config = ModelConfig.from_dict(read_checkpoint(source)["model_config"])
        except (TypeError, ValueError) as e:
            raise BadInputError(f"{source}: invalid config: {e}") from None
    return resolve_profiles(profiles, config)


def _stage_artifact(source: Path, backend: str, version_dir: Path, *, mode, precision, opset, keep_ratios,
                    head_impl, layout, profiles, timing_cache, log) -> tuple[Path, dict[str, str], list | None]:
    """Put the artifact (and its manifest) into the version folder; (artifact, metadata, engine profiles)."""
    from .onnx import check_opset, to_onnx
    from .trt import onnx_model_config

    check_opset(opset)
    target = version_dir / _FILE[backend]
    if backend == "onnxruntime":
        if source.suffix == ".onnx":
            onnx_model_config(source)
            shutil.copyfile(source, target)
        else:
            to_onnx(source, target, mode=mode, opset=opset, precision=precision, keep_ratios=keep_ratios,
                    head_impl=head_impl, layout=layout, log=log)
        _, meta = onnx_model_config(target)
        man = {"format": "trimkit-onnx-manifest", "format_version": 1, "trimkit_version": __version__,
               "onnx_sha256": sha256_file(target), "trimkit_mode": meta.get("trimkit_mode"),
               "labels": json.loads(meta.get("labels", "[]")), "weights_sha256": meta.get("trimkit_weights_sha256")}
        target.with_name(target.name + ".json").write_text(json.dumps(man, indent=2) + "\n")
        return target, meta, None
    if backend == "openvino":
        from .openvino import ir_metadata, to_openvino

        if source.suffix == ".xml":
            from .openvino import ir_paths, read_ir_manifest

            read_ir_manifest(source)
            xml, binf, man = ir_paths(source)
            for src, dst in ((xml, target), (binf, target.with_suffix(".bin")),
                             (man, target.with_name(target.name + ".json"))):
                shutil.copyfile(src, dst)
        else:
            to_openvino(source, target, mode=mode, precision=precision, opset=opset, keep_ratios=keep_ratios,
                        head_impl=head_impl, layout=layout, log=log)
        return target, ir_metadata(target), None
    from .manifest import manifest_path, read_manifest

    if source.suffix in ENGINE_SUFFIXES:
        man = read_manifest(source)
        if sha256_file(source) != man.get("engine_sha256", sha256_file(source)):
            raise BadInputError(f"{source}: the engine does not match its manifest (engine_sha256 differs)")
        shutil.copyfile(source, target)
        shutil.copyfile(manifest_path(source), manifest_path(target))
    else:
        from .trt import export_engine

        export_engine(source, target, profiles=profiles, mode=mode, precision=precision, opset=opset,
                      keep_ratios=keep_ratios, head_impl=head_impl, layout=layout, timing_cache=timing_cache, log=log)
        man = read_manifest(target)
    meta = {"trimkit_config": json.dumps(man["trimkit_config"]), "labels": json.dumps(man["labels"]),
            "trimkit_mode": man.get("trimkit_mode") or ""}
    return target, meta, man["profiles"]


def to_triton(source: str | os.PathLike, out: str | os.PathLike, *, backend: str = "onnxruntime",
              max_batch: int | None = None, instance_count: int = 1, name: str | None = None, mode: str = "adaptive",
              precision: str = "fp32", opset: int = DEFAULT_OPSET, keep_ratios=None, head_impl: str = "auto",
              layout: str = "packed", profiles=None, timing_cache=None, threads: int | None = None,
              force: bool = False, log=None) -> TritonExport:
    """Write `out/<name>/` (config.pbtxt, 1/<artifact> + manifest) from a checkpoint or an artifact."""
    from ..config import ModelConfig
    from ..contract import MAX_BATCH

    say = log or (lambda msg: None)
    if backend not in BACKENDS:
        raise BadInputError(f"unknown Triton backend {backend!r}; choose {', '.join(BACKENDS)}")
    if instance_count < 1:
        raise BadInputError(f"--instance-count must be >= 1, got {instance_count}")
    if max_batch is not None and not 1 <= max_batch <= MAX_BATCH:
        raise BadInputError(f"--max-batch must lie in 1..{MAX_BATCH}, got {max_batch}")
    source, repo = Path(source), Path(out)
    if not source.exists():
        raise BadInputError(f"{source}: no such file")
    if repo.exists() and not repo.is_dir():
        raise BadInputError(f"{repo}: not a folder (a Triton model repository is one)")
    if not repo.parent.exists():
        raise BadInputError(f"{repo}: folder {repo.parent} does not exist")
    model = _model_name(source, name)
    final = repo / model
    if final.exists() and not force:
        raise BadInputError(f"{final}: already exists; pass --force to overwrite")
    if backend == "tensorrt":
        # the profiles and --max-batch against them: option errors come before the TensorRT check and the build
        profiles = _engine_profiles(source, profiles)  # resolved once; the build takes them as they are
        largest = max(p.batch[2] for p in profiles)
        if max_batch is not None and max_batch > largest:
            raise BadInputError(f"--max-batch {max_batch} exceeds the engine's largest profile batch {largest}")
        max_batch = max_batch or largest
        if source.suffix not in ENGINE_SUFFIXES:
            from .trt import check_trt_ready

            check_trt_ready()  # before anything is created
    elif backend == "openvino":
        from ..runtime.openvino import import_openvino

        import_openvino()
    made_repo = not repo.exists()
    repo.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model}.", dir=repo))
    try:
        version = staging / "1"
        version.mkdir()
        artifact, meta, engine_profiles = _stage_artifact(
            source, backend, version, mode=mode, precision=precision, opset=opset, keep_ratios=keep_ratios,
            head_impl=head_impl, layout=layout, profiles=profiles, timing_cache=timing_cache, log=log)
        config = ModelConfig.from_dict(json.loads(meta["trimkit_config"])["model_config"])
        io = model_io(config)
        # keep_counts' middle axis (trimmed layers) as the artifact declares it
        io["output"][1]["dims"][0] = _artifact_io(artifact)["keep_counts"][1][1]
        profile_ids = None
        if engine_profiles is not None:  # max_batch was checked against them above
            profile_ids = list(range(len(engine_profiles)))
        max_batch = max_batch or DEFAULT_MAX_BATCH
        text = render_config(model, backend, io, max_batch=max_batch, instance_count=instance_count,
                             profiles=profile_ids, threads=threads)
        (staging / "config.pbtxt").write_text(text)
        labels = json.loads(meta.get("labels", "[]"))
        (staging / "labels.txt").write_text("\n".join(labels) + "\n")  # Triton's label_filename format
        problems = check_repository(repo, model, root=staging)
        if problems:
            raise CheckFailedError(f"{final}: config.pbtxt does not match the artifact: {'; '.join(problems)}")
        if final.exists():  # --force: swap the old model folder out only once the new one is complete
            old = Path(tempfile.mkdtemp(prefix=f".{model}.old.", dir=repo))
            os.replace(final, old / model)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if made_repo and not any(repo.iterdir()):
            repo.rmdir()
        raise
    say(f"wrote {final}/config.pbtxt and {final}/1/{artifact.name} ({backend}, max_batch_size {max_batch})")
    return TritonExport(final, final / "config.pbtxt", final / "1" / artifact.name, backend, max_batch, io)


def _artifact_io(path: Path) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, dims with the batch axis) as the artifact itself declares them (-1: dynamic)."""
    if path.suffix == ".onnx":
        import onnx
        from onnx import helper

        g = onnx.load(str(path), load_external_data=False).graph
        out = {}
        for v in list(g.input) + list(g.output):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
            out[v.name] = (str(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)), dims)
        return out
    if path.suffix == ".xml":
        from ..runtime.openvino import import_openvino

        m = import_openvino().Core().read_model(str(path))
        names = {"f32": "float32", "i64": "int64", "f16": "float16"}
        return {p.get_any_name(): (names.get(p.get_element_type().get_type_name(), "?"),
                                   [d.get_length() if d.is_static else -1 for d in p.get_partial_shape()])
                for p in list(m.inputs) + list(m.outputs)}
    from .manifest import read_manifest

    names = {"float": "float32", "int64": "int64", "half": "float16"}
    return {t["name"]: (names.get(t["dtype"], t["dtype"]), list(t["shape"])) for t in read_manifest(path)["io"]}


def check_repository(repo: str | os.PathLike, name: str, *, root: str | os.PathLike | None = None) -> list[str]:
    """Parse `<repo>/<name>/config.pbtxt` with Triton's own ModelConfig protobuf (tritonclient) and compare it
    with the artifact's I/O. Returns the problems found (empty: consistent). Without tritonclient the
    config cannot be parsed as Triton would: MissingDependencyError."""
    from google.protobuf import text_format

    from ..errors import import_optional

    model_config_pb2 = import_optional("tritonclient.grpc.model_config_pb2", "checking a Triton config needs "
                                       "tritonclient: pip install 'tritonclient[grpc]'")
    folder = Path(root) if root else Path(repo) / name
    cfg = model_config_pb2.ModelConfig()
    try:
        text_format.Parse((folder / "config.pbtxt").read_text(), cfg)
    except text_format.ParseError as e:
        return [f"config.pbtxt does not parse as Triton's ModelConfig: {e}"]
    problems = []
    if cfg.name != name:
        problems.append(f"name {cfg.name!r} is not the folder name {name!r}")
    kind = cfg.platform or cfg.backend
    backend = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "openvino": "openvino"}.get(kind)
    if backend is None:
        return problems + [f"unknown platform/backend {kind!r}"]
    artifact = folder / "1" / (cfg.default_model_filename or _FILE[backend])
    if not artifact.exists():
        return problems + [f"no {artifact.relative_to(folder)}"]
    have = _artifact_io(artifact)
    dtype_of = {v: k for k, v in _TYPE.items()}
    declared = [(t, "input") for t in cfg.input] + [(t, "output") for t in cfg.output]
    if sorted(t.name for t, _ in declared) != sorted(have):
        problems.append(f"tensors {sorted(t.name for t, _ in declared)} are not the artifact's {sorted(have)}")
    for t, _mode in declared:
        if t.name not in have:
            continue
        dtype, dims = have[t.name]
        want = model_config_pb2.DataType.Name(t.data_type)
        if dtype_of.get(want) != dtype:
            problems.append(f"{t.name}: {want} but the artifact has {dtype}")
        full = ([-1] if cfg.max_batch_size > 0 else []) + list(t.dims)
        if full != dims:
            problems.append(f"{t.name}: dims {full} (batch first) but the artifact has {dims}")
    if cfg.max_batch_size < 1:
        problems.append("max_batch_size must be >= 1 (the artifacts have a dynamic batch axis)")
    if backend == "tensorrt":
        from .manifest import read_manifest

        profs = read_manifest(artifact)["profiles"]
        largest = max(p.batch[2] for p in profs)
        if cfg.max_batch_size > largest:
            problems.append(f"max_batch_size {cfg.max_batch_size} exceeds the engine's profiles (batch <= {largest})")
        for g in cfg.instance_group:
            bad = [p for p in g.profile if not p.isdigit() or int(p) >= len(profs)]
            if bad:
                problems.append(f"instance_group profiles {bad} are not among the engine's {len(profs)}")
    return problems
