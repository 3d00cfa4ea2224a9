"""One writer per store at a time, with a lock that dies with its process.

``fcntl.flock`` locks belong to an open file description, and the kernel drops them when the
last descriptor of it is closed: when the process exits for any reason (kill -9 included), so a
crash never leaves a lock that blocks the next run. A forked child (a DataLoader decoding
worker) would inherit the descriptor and keep the lock alive after its parent died; so every
child closes the lock descriptors it inherited as soon as it is forked (closing, unlike
unlocking, leaves the parent's lock in place). Only in the instant between ``fork`` and the
child's first step does the child hold a copy; it drops it the moment it runs. The lock file also records who holds it, so a
refused writer can say which process to wait for.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket
from pathlib import Path

from embedcyto.errors import StoreError, StoreLockedError

# Descriptors of the locks this process holds, closed in every forked child. Process state by
# nature: a lock is held by a process, and fork copies the process.
_HELD: set[int] = set()


def _close_inherited_locks() -> None:
    """Run in a freshly forked child: give up the parent's lock descriptors (not the locks)."""
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class StoreLock:
    """An exclusive, non-blocking lock on ``lock_file``; a context manager.

    Args:
        lock_file: path of the lock file (created if needed; never deleted, because removing a
            lock file another process has open would let two writers in).
        target: the store the lock protects, named in messages.
    """

    def __init__(self, lock_file: str | os.PathLike, target: str | os.PathLike):
        self.lock_file = Path(lock_file)
        self.target = Path(target)
        self._fd: int | None = None
        self._pid: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None and self._pid == os.getpid()

    def acquire(self) -> StoreLock:
        """Take the lock or raise :class:`StoreLockedError` naming the holder."""
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StoreError(
                f"cannot create lock file {self.lock_file}: {err}; check that the store folder "
                "is writable or choose another one (`store_dir=`)"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StoreLockedError(
                f"{self.target} is being written by {holder}; wait for that run to finish, or "
                f"stop it (an interrupted run resumes where it stopped), or write to another "
                "store folder (`store_dir=`)"
            ) from None
        except OSError as err:
            os.close(fd)
            raise StoreError(f"cannot lock {self.lock_file}: {err}") from err
        self._fd, self._pid = fd, os.getpid()
        _HELD.add(fd)
        _write_holder(fd)
        return self

    def release(self) -> None:
        """Drop the lock (idempotent). The file stays; its content is stale but harmless."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self._pid != os.getpid():
            return  # a forked child: its copy of the descriptor was closed at fork
        _HELD.discard(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _write_holder(fd: int) -> None:
    """Record who holds the lock; on a full disk the lock still holds, only unnamed."""
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    except OSError:
        pass


def _read_holder(fd: int) -> str:
    """Who holds the lock, from the lock file; vague rather than failing if unreadable."""
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode() or "{}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    return f"process {info['pid']} on host {info.get('host', '?')} (since {info.get('since', '?')})"
