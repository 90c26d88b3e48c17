"""Atomic file output: every file the toolkit writes goes through here.

A file is written to a temporary name in its target directory and renamed over
the target only once complete, so an interrupted or failed write never leaves
a truncated output and never destroys the previous one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator

from amct.errors import OutputError


def _check_dir(path: str, create: bool) -> str:
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        if not create:
            raise OutputError(f"{path}: directory '{d}' does not exist")
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{path}: cannot create directory '{d}': {e.strerror}") from e
    return d


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", create_dir: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it to ``path`` on success."""
    d = _check_dir(path, create_dir)
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    except OSError as e:
        raise OutputError(f"{path}: cannot write in '{d}': {e.strerror}") from e
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"})) as f:
            yield f
            f.flush()
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


class AtomicGroup:
    """Write several files so that either all appear or none changes.

    Each ``open`` goes to a temporary file; ``commit`` renames them all at the
    end.  A failure before ``commit`` deletes the temporaries and leaves every
    previous output untouched.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[str, str]] = []

    @contextlib.contextmanager
    def open(self, path: str, mode: str = "wb") -> Iterator[IO]:
        d = _check_dir(path, True)
        try:
            fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
        except OSError as e:
            raise OutputError(f"{path}: cannot write in '{d}': {e.strerror}") from e
        self._pending.append((tmp, path))
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"})) as f:
            yield f

    def commit(self) -> None:
        for tmp, path in self._pending:
            os.chmod(tmp, 0o644 & ~_umask())
            os.replace(tmp, path)
        self._pending.clear()

    def abort(self) -> None:
        for tmp, _ in self._pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._pending.clear()

    def __enter__(self) -> "AtomicGroup":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
