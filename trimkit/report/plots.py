"""Matplotlib on a headless machine: the Agg backend, figures saved atomically and closed."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["pyplot", "save_figure", "separate_labels", "FIGURE_FORMATS", "figure_format", "check_figure_path"]

# file suffix -> the format matplotlib writes for it (Agg renders the rasters; JPEG goes through Pillow)
FIGURE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".pdf": "pdf", ".svg": "svg"}


def figure_format(path: str | os.PathLike) -> str | None:
    """The format a figure is written in for this file name, or None when trimkit does not write that suffix."""
    return FIGURE_FORMATS.get(Path(path).suffix.lower())


def check_figure_path(out: str | os.PathLike) -> Path:
    """`out` names a figure format trimkit writes (by its suffix), else one-line bad input."""
    from ..errors import BadInputError

    out = Path(out)
    if figure_format(out) is None:
        raise BadInputError(f"{out}: trimkit writes figures as {' / '.join(FIGURE_FORMATS)}, not "
                            f"{out.suffix or 'a file without a suffix'}")
    return out


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (lazy import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 120, tight: bool = True) -> Path:
    """Write `fig` to `path` in the format its suffix names (PNG for a suffix trimkit does not write),
    atomically, overwriting, and close it. `tight`: lay it out first (off when the figure was laid out
    already, e.g. to leave room for a legend outside its axes)."""
    from ..fileio import atomic_write

    plt = pyplot()
    fmt = figure_format(path) or "png"
    try:
        if tight:
            fig.tight_layout()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi), force=True)
    finally:
        plt.close(fig)


def separate_labels(fig, texts, *, step: float = 9.0, tries: int = 20) -> None:
    """Nudge annotation texts (offset in points) upwards until no two overlap, in the order given; for
    labels of points that sit close together."""
    renderer = fig.canvas.get_renderer()
    placed = []
    for text in texts:
        for _ in range(tries):
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            x, y = text.xyann
            text.xyann = (x, y + step)
        placed.append(text.get_window_extent(renderer))
