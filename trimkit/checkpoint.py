"""Checkpoints: a plain dict of tensors and JSON-like values.

Read with `torch.load(path, weights_only=True)` only: a file that carries pickled code is
refused without running it. Written atomically; never overwritten without `force`.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import ModelConfig, TrimConfig
from .data.tokenizer import tokenizer_from_dict
from .errors import BadInputError
from .fileio import atomic_write
from .models import MeterModel, build_model

__all__ = ["FORMAT", "FORMAT_VERSION", "save_checkpoint", "load_checkpoint", "read_checkpoint", "checkpoint_dict",
           "weights_digest"]

FORMAT = "trimkit-checkpoint"
FORMAT_VERSION = 1
_REQUIRED = ("format", "format_version", "trimkit_version", "model_config", "trim_config", "labels", "state_dict")


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes): ties an export to its checkpoint."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def checkpoint_dict(model: MeterModel, *, train_state: dict | None = None, meta: dict | None = None) -> dict[str, Any]:
    """The checkpoint contents of `model` (its `labels` and `tokenizer` attributes included)."""
    labels = list(getattr(model, "labels", None) or [])
    if len(labels) != model.config.num_labels:
        raise BadInputError(f"model has {model.config.num_labels} outputs but {len(labels)} labels")
    tok = getattr(model, "tokenizer", None)
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "trimkit_version": __version__,
        "model_config": model.config.to_dict(),
        "trim_config": model.trim.to_dict(),
        "labels": labels,
        "tokenizer": tok.to_dict() if tok is not None else None,
        "meta": dict(getattr(model, "meta", None) or {}) | dict(meta or {}),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    if train_state is not None:
        ckpt["train_state"] = train_state
    return ckpt


def save_checkpoint(
    model: MeterModel,
    path: str | os.PathLike,
    *,
    force: bool = False,
    train_state: dict | None = None,
    meta: dict | None = None,
) -> Path:
    """Write `model` (plus optional train state) to `path` atomically."""
    ckpt = checkpoint_dict(model, train_state=train_state, meta=meta)
    return atomic_write(path, lambda tmp: torch.save(ckpt, tmp), force=force)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate the raw checkpoint dict; every failure is one `BadInputError` line."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{p}: no such file")
    if p.is_dir():
        raise BadInputError(f"{p}: is a directory, not a checkpoint")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types on foreign or damaged files
        msg = str(e).strip()
        if isinstance(e, pickle.UnpicklingError) and "GLOBAL" in msg:
            raise BadInputError(
                f"{p}: refused: the file holds pickled objects other than tensors and plain containers "
                "(possibly code); trimkit never unpickles code") from None
        if zipfile.is_zipfile(p):
            first = msg.splitlines()[0] if msg else type(e).__name__
            raise BadInputError(f"{p}: not a readable trimkit checkpoint (truncated or corrupt: {first})") from None
        raise BadInputError(f"{p}: not a trimkit checkpoint (not a PyTorch file, or truncated)") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise BadInputError(f"{p}: not a trimkit checkpoint (no format={FORMAT!r} field)")
    version = obj.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BadInputError(f"{p}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise BadInputError(
            f"{p}: written by a newer trimkit ({obj.get('trimkit_version')}, format_version {version}); "
            f"this trimkit {__version__} reads format_version <= {FORMAT_VERSION}")
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise BadInputError(f"{p}: checkpoint lacks {', '.join(missing)}")
    return obj


def model_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike = "<checkpoint>") -> MeterModel:
    """Build the model a checkpoint dict describes and load its weights (strict)."""
    try:
        config = ModelConfig.from_dict(ckpt["model_config"])
        trim = TrimConfig.from_dict(ckpt["trim_config"])
    except (TypeError, ValueError) as e:
        raise BadInputError(f"{path}: invalid config: {e}") from None
    labels = list(ckpt["labels"])
    if len(labels) != config.num_labels:
        raise BadInputError(f"{path}: {len(labels)} labels do not match the model's {config.num_labels} outputs")
    model = build_model(config, trim)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise BadInputError(f"{path}: weights do not match the config: {first}") from None
    model.labels = labels
    tok = ckpt.get("tokenizer")
    model.tokenizer = tokenizer_from_dict(tok) if tok else None
    if model.tokenizer is not None and len(model.tokenizer) != config.vocab_size:
        raise BadInputError(
            f"{path}: tokenizer has {len(model.tokenizer)} words but the model's vocab_size is {config.vocab_size}")
    model.meta = dict(ckpt.get("meta") or {})
    return model.eval()


def load_checkpoint(path: str | os.PathLike) -> MeterModel:
    """The model in a checkpoint, in eval mode (`model.config`, `model.labels`, `model.tokenizer`)."""
    return model_from_checkpoint(read_checkpoint(path), path)
