"""Atomic file and directory outputs: a crash leaves either nothing or something complete.

Every writer in the package goes through these helpers (temp name in the same directory, fsync, rename),
so a half-written file never carries the name of a finished one; an OSError while writing becomes an
``OutputError`` that names the file (and, where the caller knows them, the step and build stage).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "OutputError",
    "output_error",
    "naming_output",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_dir",
    "fsync_dir",
]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which would race with other threads.
_UMASK = _read_umask()


class OutputError(OSError):
    """An OSError raised while writing an output, naming the file, the step and the build stage where known.

    ``errno`` is the original one (``e.errno == errno.ENOSPC`` still tells a full disk), ``filename`` the file;
    ``step`` is set by the code that writes, ``stage`` by the build that runs it.
    """

    step: str | None = None
    stage: str | None = None

    def __str__(self) -> str:
        where = ", ".join(f"{k} {v}" for k, v in (("stage", self.stage), ("step", self.step)) if v)
        return (
            f"cannot write {self.filename}{f' ({where})' if where else ''}: [Errno {self.errno}] "
            f"{self.strerror}{_what_to_do(self.errno)}"
        )


def _what_to_do(code: int | None) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT):
        return (
            "; free space on that file system (or write the output elsewhere), then run the same command "
            "again (a build resumes from its finished tasks)"
        )
    if code == errno.EROFS:
        return "; the file system is read-only: write the output elsewhere"
    return ""


def output_error(e: OSError, path: str | os.PathLike, step: str | None = None) -> OutputError:
    """``e`` as an ``OutputError`` for writing ``path``; a file ``e`` names itself stays in its message.
    One that is already an ``OutputError`` only gains ``step`` where it had none."""
    if isinstance(e, OutputError):
        e.step = e.step or step
        return e
    reason = e.strerror or str(e)
    if e.filename is not None and os.fspath(e.filename) != os.fspath(path):
        reason = f"{reason}: {os.fspath(e.filename)!r}"
    err = OutputError(e.errno, reason, os.fspath(path))
    err.step = step
    return err


@contextlib.contextmanager
def naming_output(path: str | os.PathLike, step: str | None = None) -> Iterator[None]:
    """Re-raise an OSError of the block as an ``OutputError`` naming ``path`` and ``step``."""
    try:
        yield
    except OutputError as e:
        output_error(e, path, step)
        raise
    except OSError as e:
        raise output_error(e, path, step) from e


def fsync_dir(path: str | os.PathLike) -> None:
    """Persist a rename: the directory entry itself must reach the disk too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """Open ``path.<random>.tmp`` for writing; on clean exit fsync and rename it to ``path``.

    An OSError inside (the caller's writes included) is raised as an ``OutputError`` naming ``path``.
    """
    path = Path(path)
    with naming_output(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        # mkstemp creates 0600; a finished output gets the permissions a plain open() would give it.
        os.fchmod(fd, 0o666 & ~_UMASK)
        os.close(fd)
        try:
            with open(tmp, mode, **kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``path`` only if the block succeeds.

    With ``overwrite`` an existing ``path`` is replaced after the new one is complete.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists: choose another directory or pass --force to replace it"
        )
    with naming_output(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp's 0700 would hide a finished output from other users
    try:
        yield tmp
        # only the moves are named here: the block names the files it writes itself (atomic_open does)
        with naming_output(path):
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
            fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
