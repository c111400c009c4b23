"""trimkit: SmartTrim adaptive token and head pruning for vision-language models, exported
with the pruning alive to ONNX and TensorRT, and verified against PyTorch.

The public names are imported lazily so that `import trimkit` (and `trimkit --help`) stays
cheap; `trimkit.load_checkpoint` pulls in torch on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "ModelConfig": "config",
    "TrimConfig": "config",
    "TrimkitError": "errors",
    "BadInputError": "errors",
    "CheckFailedError": "errors",
    "MissingDependencyError": "errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'trimkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
