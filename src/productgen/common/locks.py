"""One writer per output folder: an advisory lock file beside the folder, held for as long as a process writes.

Two ``productgen train`` runs into one ``--out`` (or two ``data prepare`` into one ``-o``) used to interleave their
files silently. Now the second one stops at once with one line naming the holder (its PID, host, command and
start time), and the first one is untouched.

Why this design:

- ``fcntl.flock`` on ``<parent>/.<folder>.lock``: the kernel drops the lock when the holding process dies (a
  ``kill -9``, an OOM kill, a power cut), so a stale lock file never blocks anybody; whoever comes next simply
  takes it. Locks are per open file, so even a second writer inside the same process is refused.
- The lock file sits *beside* the folder, not inside it: ``data prepare`` swaps a whole new folder into place,
  and DVC hashes run folders; a lock file inside would be swapped away or hashed.
- On release the holder deletes the file while still holding the lock, so a clean run leaves nothing behind.
  A process that opened the old file just before may then lock a deleted inode; it notices (the path no longer
  names the inode it locked) and tries again, so two writers never both believe they hold the folder.
- Never blocking: a writer that finds the folder busy is told so immediately (no queueing behind a run that
  may take hours).

Only the standard library: core code (the training engine, ``data prepare``) uses it.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from productgen.common.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])


class FolderBusy(UserError):
    """Another process is writing to the folder (exit status 2: nothing was touched, try again later)."""


def lock_path(folder: Path) -> Path:
    """``<parent>/.<name>.lock``: beside the folder, so swapping or hashing the folder never touches it."""
    folder = Path(os.path.abspath(folder))
    return folder.with_name(f".{folder.name}.lock")


def _holder(path: Path) -> str:
    """Who holds ``path``, from what the holder wrote into it (it writes right after locking: retry briefly)."""
    for _ in range(20):
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
            host = "" if info.get("host") == socket.gethostname() else f" on {info.get('host')}"
            return f"PID {info['pid']}{host} ({info.get('command', '?')}, since {started})"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "PID unknown"


class FolderLock:
    """An acquired lock on one folder; release it with :meth:`release` (or let the process end)."""

    def __init__(self, folder: Path, what: str) -> None:
        self.folder, self.what = Path(folder), what
        self.path = lock_path(self.folder)
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(
                f"{self.folder}: cannot create its parent folder ({err.strerror}); choose a writable location"
            ) from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as err:
                raise UserError(
                    f"{self.path}: cannot create the lock file of {self.what} {self.folder} "
                    f"({err.strerror}); choose a writable location"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FolderBusy(
                    f"{self.folder}: {self.what} is being written by another process, "
                    f"{_holder(self.path)}; wait for it to finish or choose another folder"
                ) from None
            except OSError as err:  # a file system without locks: say so rather than run unprotected silently
                os.close(fd)
                raise UserError(
                    f"{self.path}: cannot lock ({err.strerror}); use a local file system for {self.what}"
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder deleted the file as we opened it: lock the new one instead
                os.close(fd)
                continue
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.time(),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200] if sys.argv else "python",
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self._fd = fd
            return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it: see the module docstring
        except OSError:
            pass
        os.close(self._fd)  # closing drops the lock
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def folder_lock(folder: Path | str, what: str = "the folder") -> Iterator[FolderLock]:
    """Hold the write lock of ``folder`` for the ``with`` block; raises :class:`FolderBusy` at once if taken."""
    lock = FolderLock(Path(folder), what).acquire()
    try:
        yield lock
    finally:
        lock.release()


def locks_folder(folder_of: Callable[..., Any], what: str) -> Callable[[F], F]:
    """Decorator: hold the lock of ``folder_of(*args, **kwargs)`` while the function runs.

    ``@locks_folder(lambda cfg, *a, **k: cfg.out, "the prepared dataset")`` is one line above a function, so
    callers and the function body stay as they are.
    """

    def wrap(func: F) -> F:
        @functools.wraps(func)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with folder_lock(Path(folder_of(*args, **kwargs)), what):
                return func(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap
