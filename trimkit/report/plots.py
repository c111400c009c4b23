"""Matplotlib on a headless machine: the Agg backend, figures saved atomically and closed."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["pyplot", "save_figure"]


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (lazy import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Write `fig` as PNG to `path` (atomically, overwriting) and close it."""
    from ..fileio import atomic_write

    plt = pyplot()
    try:
        fig.tight_layout()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi), force=True)
    finally:
        plt.close(fig)
