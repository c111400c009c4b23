"""The `trimkit` command: thin Typer wiring; every command calls the library and prints.

Known errors (`TrimkitError`) become one line on stderr and their exit code (DESIGN.md §5);
set TRIMKIT_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import enum
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from .errors import TrimkitError

__all__ = ["app", "main"]

app = typer.Typer(
    name="trimkit",
    help="SmartTrim adaptive pruning for vision-language models: train, export (ONNX/TensorRT), verify.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class Preset(str, enum.Enum):
    tiny = "tiny"
    small = "small"
    base = "base"


OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Where to write (atomic; see --force).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
DataOpt = Annotated[str, typer.Option("--data", help="Dataset: easyvqa.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]


def _console():
    from rich.console import Console

    return Console()


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
    seed: SeedOpt = 0,
    force: ForceOpt = False,
) -> None:
    """Create a fresh model (+ trimmers, all keeping) sized for a dataset's answers and words."""
    from .checkpoint import save_checkpoint
    from .factory import new_model
    from .fileio import check_writable

    check_writable(out, force=force)
    model = new_model(preset.value, data, seed=seed)
    save_checkpoint(model, out, force=force)
    n = sum(p.numel() for p in model.parameters())
    n_trim = sum(p.numel() for p in model.trimmer_parameters())
    typer.echo(f"wrote {out}: preset {preset.value}, {n:,} parameters ({n_trim:,} in trimmers), "
               f"{model.config.num_labels} labels, {model.config.vocab_size} words")


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A trimkit checkpoint (.pt) or an ONNX file (.onnx).")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the description as JSON.")] = None,
    text_len: Annotated[int | None, typer.Option("--text-len", help="Text length for the FLOPs table.")] = None,
) -> None:
    """Show what a checkpoint or an ONNX file holds."""
    from .inspect import describe
    from .render import render_description

    info = describe(path, text_len=text_len)
    render_description(info, _console())
    if json_out is not None:
        from .fileio import atomic_write

        atomic_write(json_out, lambda tmp: tmp.write_text(json.dumps(info, indent=2)), force=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (known errors -> one line on stderr)."""
    try:
        app(args=argv, prog_name="trimkit", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except TrimkitError as e:
        if os.environ.get("TRIMKIT_DEBUG") == "1":
            raise
        print(f"trimkit: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def entry() -> None:  # console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
