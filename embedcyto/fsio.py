"""Durable file writes: the one way embedcyto replaces a file.

Every file embedcyto writes for later runs to trust (split files, image-check caches, probe
results, LoRA run files, store manifests) goes through :func:`atomic_write`: the bytes go to a
temporary file beside the target, are flushed and fsynced, the temporary file is renamed onto
the target, and the folder is fsynced so the rename itself survives a power cut. A reader
therefore sees the old file or the new one, never half of one, and a failed write (a full disk,
an interrupt) leaves neither a damaged target nor a temporary file behind.

New files get the usual permissions (``0o666`` minus the umask), not the ``0o600`` of
:func:`tempfile.mkstemp`, so a split file shared by a lab stays readable by the lab.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, IO

from embedcyto.errors import EmbedcytoError

TMP_INFIX = ".tmp-"


class DiskFullError(EmbedcytoError):
    """A write failed because the file system is full (or over quota)."""

    def __init__(self, path: str | os.PathLike, needed: int | None = None):
        self.path = str(path)
        self.needed = needed
        folder = Path(path).parent
        try:
            free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
        except OSError:
            free = None
        parts = [f"no space left on the device holding {folder} while writing {Path(path).name}"]
        if needed is not None:
            parts.append(f"about {_human(needed)} needed")
        if free is not None:
            parts.append(f"{_human(free)} free")
        super().__init__("; ".join(parts) + ". Free some space (or choose another folder) and run "
                         "again: finished work was kept and will be reused.")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def is_disk_full(err: BaseException) -> bool:
    """True for the errors a full disk or an exhausted quota raises."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def tmp_path_for(path: str | os.PathLike) -> Path:
    """A temporary name beside ``path``, unique per process and thread (same file system, so
    the final rename is atomic). Leftovers are recognisable by :data:`TMP_INFIX`."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_INFIX}{os.getpid()}-{threading.get_ident()}")


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename (or a new file) durable: fsync the folder that holds the name."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *,
                 needed: int | None = None) -> Path:
    """Call ``write(handle)`` on a temporary binary file, fsync it and rename it onto ``path``.

    On any failure the temporary file is removed and ``path`` is left as it was. A full disk is
    reported as :class:`DiskFullError` (with ``needed`` bytes when the caller knows them).
    """
    path = Path(path)
    tmp = tmp_path_for(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as err:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError:  # pragma: no cover - nothing more can be done
            pass
        if is_disk_full(err):
            raise DiskFullError(path, needed) from err
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically and durably."""
    return atomic_write(path, lambda handle: handle.write(data), needed=len(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Replace ``path`` with UTF-8 ``text`` atomically and durably."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Replace ``path`` with ``obj`` as JSON (sorted keys, trailing newline)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def remove_stale_tmp(folder: str | os.PathLike, name: str) -> int:
    """Delete temporary files of ``name`` left in ``folder`` by processes that no longer run.

    Returns how many were removed. A temporary file of a live process is left alone.
    """
    removed = 0
    prefix = f".{name}{TMP_INFIX}"
    for candidate in Path(folder).glob(f"{prefix}*"):
        pid_text = candidate.name[len(prefix):].split("-", 1)[0]
        if pid_text.isdigit() and pid_alive(int(pid_text)):
            continue
        try:
            candidate.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (this process included); the owner of leftover files."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
