"""Errors that the CLI turns into one line and an exit code.

Exit codes: 0 ok · 1 a check failed · 2 bad input or missing dependency · 130 stopped by Ctrl-C.
"""

from __future__ import annotations

__all__ = ["TrimkitError", "BadInputError", "MissingDependencyError", "CheckFailedError", "Interrupted"]


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
