"""The probe results files: one JSON line per task in ``<results>/<dataset>.jsonl``.

Several ``embedcyto probe`` processes may write the same folder at once (a grid split over
machines sharing a disk, or two terminals). Every write therefore takes an exclusive POSIX record
lock (``fcntl.lockf`` on a ``.<dataset>.jsonl.lock`` file beside it), re-reads the file under the
lock, merges its own rows in and replaces the file atomically
(:func:`embedcyto.fsio.atomic_write_text`).
A finished row of another process is never dropped: a row is only ever replaced by a newer row
of the same task (same dataset, model, method, shots, seed and options). Readers need no lock:
the file is replaced whole, so they see the old version or the new one.

A record lock belongs to its process and is released by the kernel when the process dies, so a
killed probe never leaves the folder locked.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from embedcyto.errors import ProbeError

#: What identifies a task; with ``store_identity`` added, what identifies a result row.
TASK_FIELDS = ("dataset", "model", "method", "shots", "seed", "options")


def row_key(row: Mapping[str, Any]) -> str:
    """What identifies a result row: its task and the store identity it was computed on."""
    return json.dumps({k: row.get(k) for k in (*TASK_FIELDS, "store_identity")}, sort_keys=True)


def task_key(row: Mapping[str, Any]) -> str:
    """What identifies a row's task, whatever store it was computed on."""
    return row_key({**row, "store_identity": None})


def results_file(results_dir: str | os.PathLike, dataset: str) -> Path:
    """``<results_dir>/<dataset>.jsonl``."""
    return Path(results_dir) / f"{dataset}.jsonl"


def read_results(path: Path) -> list[dict]:
    """Rows of a results file (empty list when it does not exist).

    Raises:
        ProbeError: a line that is not JSON (file and line named).
    """
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ProbeError(f"{path} line {number} is not JSON ({err}); delete that line or the "
                             "file and run again") from err
    return rows


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive write lock of one results file (waits for other writers)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the record lock


def merge_rows(path: Path, rows: Iterable[dict]) -> list[dict]:
    """Add rows to a results file under its lock; return the file's rows after the merge.

    A row already in the file for the same task (e.g. computed on an older store) is replaced;
    every other row, whoever wrote it, is kept.
    """
    from embedcyto.fsio import atomic_write_text

    new = [json.loads(json.dumps(r, sort_keys=True)) for r in rows]  # as read back from disk
    fresh = {task_key(r) for r in new}
    with locked(path):
        merged = [r for r in read_results(path) if task_key(r) not in fresh] + new
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in merged))
    return merged
