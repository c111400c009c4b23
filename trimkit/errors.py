"""Errors that the CLI turns into one line and an exit code.

Exit codes: 0 ok · 1 a check failed · 2 bad input or missing dependency · 130 stopped by Ctrl-C.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = ["TrimkitError", "BadInputError", "MissingDependencyError", "CheckFailedError", "Interrupted",
           "import_optional"]


class TrimkitError(Exception):
    """Base class: an error with a one-line message and a process exit code."""

    exit_code: int = 2


class BadInputError(TrimkitError, ValueError):
    """A file or argument is not what it should be (names the file and what is wrong)."""

    exit_code = 2


class MissingDependencyError(TrimkitError, ImportError):
    """An optional dependency (TensorRT, a GPU, ...) is missing; says how to install it."""

    exit_code = 2


class CheckFailedError(TrimkitError):
    """A verification check or threshold failed."""

    exit_code = 1


class Interrupted(TrimkitError):
    """Ctrl-C stopped a command that has nothing usable to leave behind (says what was, or was not, written)."""

    exit_code = 130


def import_optional(name: str, missing: str) -> ModuleType:
    """`import name`, or MissingDependencyError(`missing`, the install hint) when it is not installed.

    Any ImportError is not "not installed": an installed package can fail to import (a broken or
    mismatched install), and Ctrl-C while an extension module initializes surfaces as an ImportError
    from inside it. The first is named as such, the second stays the KeyboardInterrupt it is."""
    try:
        return importlib.import_module(name)
    except (ImportError, RuntimeError) as e:  # some packages re-raise a missing dependency as RuntimeError
        if _caused_by_interrupt(e):
            raise KeyboardInterrupt from e
        top = name.partition(".")[0]
        needed = getattr(e, "name", None) if isinstance(e, ModuleNotFoundError) else None
        if needed and needed.partition(".")[0] != top:  # the package is fine; a dependency of it is missing
            raise MissingDependencyError(f"{missing} (it needs {needed.partition('.')[0]}, which is not installed)") from None
        try:
            installed = importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            installed = False
        if not installed:
            raise MissingDependencyError(missing) from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MissingDependencyError(f"{top} is installed but does not import ({first}); reinstall it, or "
                                     f"see TRIMKIT_DEBUG=1 for the traceback") from e


def _caused_by_interrupt(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False
