"""Finished batches of an unfinished extraction, kept as small files beside the target store.

An HDF5 file killed mid-write can be left unreadable, so an unfinished extraction never lives in
one. Each finished batch is its own ``.npz`` file (row indices + features), written to a
temporary name, fsynced and renamed into place: a batch file either exists whole or not at all.
``manifest.json`` records the provenance the extraction started with, so a later run can tell
whether the batches may be reused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from embedcyto.errors import StoreError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PARTIAL_FORMAT = "embedcyto-partial"
PARTIAL_VERSION = 1
_BATCH = re.compile(r"^batch-(\d+)-rows\d+-\d+\.npz$")


def fsync_dir(folder: Path) -> None:
    """Make a rename durable: fsync the directory that holds the new name."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(handle)`` on a temporary file, fsync it and rename it onto ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class PartialFolder:
    """The ``<store>.h5.partial/`` folder of one store."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._next_seq: int | None = None

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> dict[str, Any]:
        """The manifest, or :class:`StoreError` saying how to get rid of a damaged folder."""
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StoreError(
                f"the unfinished extraction in {self.folder} cannot be read ({err}); pass "
                f"`force=True` to discard it and start again, or delete that folder"
            ) from err
        if not isinstance(manifest, dict) or manifest.get("format") != PARTIAL_FORMAT:
            raise StoreError(
                f"{self.folder} is not an embedcyto partial extraction; move it away or pass "
                f"`force=True` to replace it"
            )
        return manifest

    def create(self, manifest: dict[str, Any]) -> None:
        """Start an empty partial folder recording ``manifest`` (replacing any old one)."""
        self.discard()
        self.folder.mkdir(parents=True)
        body = {"format": PARTIAL_FORMAT, "format_version": PARTIAL_VERSION, **manifest}
        text = json.dumps(body, indent=1, sort_keys=True).encode()
        atomic_write_bytes(self.manifest_path, lambda handle: handle.write(text))
        self._next_seq = 0

    def discard(self) -> None:
        """Remove the folder and everything in it (no error if it is absent)."""
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self._next_seq = None

    def _batch_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if _BATCH.match(p.name))

    def clean_tmp(self) -> None:
        """Delete temporary files left by a process killed mid-write (caller holds the lock)."""
        if self.folder.is_dir():
            for path in self.folder.glob("*.tmp"):
                path.unlink(missing_ok=True)

    def _load(self, path: Path, *, with_features: bool):
        """(rows, features or None) of one batch; None if the file is damaged."""
        try:
            with np.load(path, allow_pickle=False) as data:
                rows = np.asarray(data["rows"], dtype=np.int64)
                feats = np.asarray(data["features"]) if with_features else None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            log.warning(
                "ignoring damaged batch file %s (%s); its rows will be recomputed", path, err
            )
            return None
        return rows, feats

    def done_mask(self, n_rows: int, *, drop_damaged: bool = False) -> np.ndarray:
        """Boolean mask of rows already saved in batch files."""
        mask = np.zeros(n_rows, dtype=bool)
        for path in self._batch_files():
            loaded = self._load(path, with_features=False)
            rows = None if loaded is None else loaded[0]
            in_range = rows is not None and (
                rows.size == 0 or (rows.min() >= 0 and rows.max() < n_rows)
            )
            if not in_range:
                if drop_damaged:
                    path.unlink(missing_ok=True)
                continue
            mask[rows] = True
        return mask

    def fill(self, out: np.ndarray) -> np.ndarray:
        """Copy every saved batch into ``out`` (rows x dim); returns the mask of filled rows."""
        mask = np.zeros(len(out), dtype=bool)
        for path in self._batch_files():
            loaded = self._load(path, with_features=True)
            if loaded is None:
                continue
            rows, feats = loaded
            if feats.shape != (len(rows), out.shape[1]):
                log.warning("ignoring batch file %s with shape %s", path, feats.shape)
                continue
            out[rows] = feats
            mask[rows] = True
        return mask

    def save_batch(self, rows: np.ndarray, features: np.ndarray) -> Path:
        """Save one finished batch atomically; returns its file."""
        if self._next_seq is None:
            seqs = [int(_BATCH.match(p.name).group(1)) for p in self._batch_files()]
            self._next_seq = max(seqs, default=-1) + 1
        name = f"batch-{self._next_seq:06d}-rows{int(rows.min()):07d}-{int(rows.max()):07d}.npz"
        self._next_seq += 1
        path = self.folder / name
        atomic_write_bytes(path, lambda handle: np.savez(handle, rows=rows, features=features))
        return path
