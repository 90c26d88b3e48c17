"""Atomic file output: every file the toolkit writes goes through here.

A file is written to a temporary file in its target directory and renamed over
the target only once complete, so an interrupted or failed write never leaves
a truncated output and never destroys the previous one.

Where the platform allows (Linux, ``O_TMPFILE`` on ext4/xfs/btrfs/tmpfs), the
temporary file is *anonymous*: it has no name until it is complete, so even a
process killed with SIGKILL mid-write leaves nothing behind (the kernel frees
the unnamed inode).  It gets a hidden name (``.<name>.<random>.tmp``) only for
the instant between ``linkat`` and ``rename``.  Elsewhere a named temporary
file is used from the start; a SIGKILL then leaves that hidden ``.tmp`` file
(never a partial output under the real name).

Every failure is an ``OutputError`` naming the path.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator

from amct.errors import AmctError, OutputError

_FILE_MODE = 0o644


def _check_dir(path: str, create: bool) -> str:
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        blocker = _first_non_dir(d)
        if blocker is not None:
            raise OutputError(f"{path}: cannot create directory '{d}': '{blocker}' exists and "
                              "is not a directory")
        if not create:
            raise OutputError(f"{path}: directory '{d}' does not exist")
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{path}: cannot create directory '{d}': {e.strerror}") from e
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a directory, not a file name")
    return d


def _first_non_dir(d: str) -> str | None:
    """The first component of ``d`` that exists but is not a directory."""
    parts = d.split(os.sep)
    for i in range(2, len(parts) + 1):
        p = os.sep.join(parts[:i]) or os.sep
        if os.path.lexists(p) and not os.path.isdir(p):
            return p
    return None


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _text_kw(mode: str) -> dict:
    return {} if "b" in mode else {"encoding": "utf-8", "newline": "\n"}


class _Temp:
    """One temporary file beside ``path``: anonymous (fd only) or named (``name``)."""

    def __init__(self, path: str, create_dir: bool) -> None:
        self.path = path
        self.dir = _check_dir(path, create_dir)
        self.name: str | None = None
        try:
            self.fd = os.open(self.dir, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, _FILE_MODE)
            self.anonymous = True
        except (AttributeError, OSError):
            self.anonymous = False
            try:
                self.fd, self.name = tempfile.mkstemp(
                    prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=self.dir)
            except OSError as e:
                raise OutputError(f"{path}: cannot write in '{self.dir}': {e.strerror}") from e

    def link(self) -> None:
        """Give the file its hidden temporary name (anonymous files only)."""
        if self.name is not None:
            return
        base = "." + os.path.basename(self.path) + "."
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(100):
                name = base + os.urandom(6).hex() + ".tmp"
                try:
                    # src_dir_fd forces linkat(AT_SYMLINK_FOLLOW): /proc/self/fd/N
                    # resolves to the open, still nameless inode.
                    os.link(f"/proc/self/fd/{self.fd}", name, src_dir_fd=dfd, dst_dir_fd=dfd,
                            follow_symlinks=True)
                except FileExistsError:
                    continue
                except OSError as e:
                    raise OutputError(f"{self.path}: cannot name the temporary file in "
                                      f"'{self.dir}': {e.strerror}") from e
                self.name = os.path.join(self.dir, name)
                return
        finally:
            os.close(dfd)
        raise OutputError(f"{self.path}: no free temporary name in '{self.dir}'")

    def publish(self) -> None:
        """Rename the (named) temporary file over the target."""
        if not self.anonymous:
            os.chmod(self.name, _FILE_MODE & ~_umask())
        try:
            os.replace(self.name, self.path)
        except OSError as e:
            raise OutputError(f"{self.path}: cannot replace the file: {e.strerror}") from e
        self.name = None

    def discard(self) -> None:
        if self.name is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.name)
            self.name = None
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


@contextlib.contextmanager
def _writing(tmp: _Temp, mode: str) -> Iterator[IO]:
    """A file object on ``tmp.fd`` (left open); write errors become OutputError."""
    f = os.fdopen(tmp.fd, mode, closefd=False, **_text_kw(mode))
    try:
        yield f
        f.flush()
    except OSError as e:
        if isinstance(e, AmctError):
            raise
        raise OutputError(f"{tmp.path}: write failed: {e.strerror or e}") from e
    finally:
        with contextlib.suppress(OSError, ValueError):
            f.close()


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", create_dir: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it to ``path`` on success."""
    tmp = _Temp(path, create_dir)
    try:
        with _writing(tmp, mode) as f:
            yield f
        tmp.link()
        tmp.close()
        tmp.publish()
    finally:
        tmp.discard()


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


class AtomicGroup:
    """Write several files so that either all appear or none changes.

    Each ``open`` goes to a temporary file (kept open, nameless where the
    platform allows, until the end); ``commit`` names them and renames them
    all at the end.  A failure before ``commit`` discards the temporaries and
    leaves every previous output untouched.  The renames themselves cannot be
    made atomic as a group; targets are checked beforehand so that they do not
    fail in practice.
    """

    def __init__(self) -> None:
        self._pending: list[_Temp] = []

    @contextlib.contextmanager
    def open(self, path: str, mode: str = "wb") -> Iterator[IO]:
        tmp = _Temp(path, True)
        self._pending.append(tmp)
        with _writing(tmp, mode) as f:
            yield f

    def commit(self) -> None:
        try:
            for tmp in self._pending:
                if os.path.isdir(tmp.path):
                    raise OutputError(f"{tmp.path}: is a directory, not a file name")
            for tmp in self._pending:
                tmp.link()
                tmp.close()
            for tmp in self._pending:
                tmp.publish()
        finally:
            self.abort()

    def abort(self) -> None:
        for tmp in self._pending:
            tmp.discard()
        self._pending.clear()

    def __enter__(self) -> "AtomicGroup":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
