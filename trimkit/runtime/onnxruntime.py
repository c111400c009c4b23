"""ONNX Runtime: session plumbing (threads, optimization level, providers) and the runner."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..contract import INPUT_NAMES, OUTPUT_NAMES
from ..errors import import_optional

__all__ = ["ort_session", "ort_feed", "OrtRunner", "load", "INSTALL_HINT"]

INSTALL_HINT = "onnxruntime is not installed: pip install onnxruntime"
_LEVELS = ("basic", "extended", "all")


def _import_ort():
    return import_optional("onnxruntime", INSTALL_HINT)


def ort_session(path: str | os.PathLike, *, threads: int | None = None, providers: list[str] | None = None,
                optimized_out: str | os.PathLike | None = None, level: str = "all"):
    """An ONNX Runtime session (lazy import; clear error when onnxruntime is missing).

    `threads` sets the intra-op pool and keeps inter-op at one: the graph is one chain, and a second
    pool only competes for the same cores."""
    ort = _import_ort()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    if optimized_out:
        so.optimized_model_filepath = str(optimized_out)
    return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])


def ort_feed(pixel_values, input_ids, attention_mask) -> dict[str, np.ndarray]:
    """An ONNX Runtime feed (name -> numpy array) of one batch of model inputs (tensors or arrays)."""
    return dict(zip(INPUT_NAMES, (t if isinstance(t, np.ndarray) else t.numpy()
                                  for t in (pixel_values, input_ids, attention_mask))))


class OrtRunner:
    """A trimkit ONNX graph in an ONNX Runtime session."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, providers: list[str] | None = None,
                 precision: str | None = None) -> None:
        self.path, self.threads, self.precision = path, threads, precision
        self.sess = ort_session(path, threads=threads, providers=providers)

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        logits, counts = self.sess.run(list(OUTPUT_NAMES), {k: feeds[k] for k in INPUT_NAMES})
        return logits, counts

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"runtime": self.name, "version": ort.__version__, "precision": self.precision,
                "threads": self.threads, "providers": self.sess.get_providers()}


def load(path: str | os.PathLike, *, threads: int | None = None, precision: str | None = None,
         providers: list[str] | None = None) -> OrtRunner:
    return OrtRunner(path, threads=threads, providers=providers, precision=precision)
