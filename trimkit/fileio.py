"""Atomic file writes: temp file in the target folder + fsync + rename.

A killed run never leaves a half-written artifact, and nothing is overwritten without `force`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import BadInputError

__all__ = ["atomic_write", "atomic_path", "atomic_write_group", "check_writable", "sha256_file"]


def check_writable(path: str | os.PathLike, *, force: bool = False) -> Path:
    """Refuse an existing target unless `force`; refuse a missing parent folder."""
    p = Path(path)
    if p.exists() and not force:
        raise BadInputError(f"{p}: already exists; pass --force to overwrite")
    if p.exists() and p.is_dir():
        raise BadInputError(f"{p}: is a directory, not a file")
    if not p.parent.exists():
        raise BadInputError(f"{p}: folder {p.parent} does not exist")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`.

    On any exception (including KeyboardInterrupt) the temporary file is removed and `path`
    is left as it was.
    """
    p = check_writable(path, force=force)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; artifacts get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        if p.exists() and not force:  # appeared while we were writing
            raise BadInputError(f"{p}: already exists; pass --force to overwrite")
        os.replace(tmp_path, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, force: bool = False) -> Path:
    """Call `write(tmp_path)` and move the result onto `path` atomically."""
    with atomic_path(path, force=force) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_group(files: dict[str | os.PathLike, Callable[[Path], None]], *, force: bool = False,
                       overwrite: frozenset[str] | set[str] = frozenset()) -> list[Path]:
    """Write several files that only make sense together (an engine and its manifest, an IR's .xml/.bin).

    Every file is written to a temporary path beside its target and fsynced first; only when all of
    them succeeded are they renamed, in the given order (put the file readers look for last). If a
    write fails nothing is renamed; if a rename fails the files already renamed are removed again, so
    a group is never left half-present. Paths in `overwrite` (e.g. a timing cache that is updated on
    every build) are replaced without `force`.
    """
    targets = [Path(p) for p in files]
    for p in targets:
        check_writable(p, force=force or str(p) in {str(x) for x in overwrite})
    tmps: list[Path] = []
    done: list[Path] = []
    try:
        for p, write in zip(targets, files.values()):
            fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
            os.close(fd)
            tmps.append(Path(tmp))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            write(Path(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        for p, tmp in zip(targets, tmps):
            os.replace(tmp, p)
            done.append(p)
    except BaseException:
        for tmp in tmps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if len(done) < len(targets):
            for p in done:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        raise
    return targets


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
