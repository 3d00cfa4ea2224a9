"""Finished batches of an unfinished extraction, kept as small files beside the target store.

An HDF5 file killed mid-write can be left unreadable, so an unfinished extraction never lives in
one. Each finished batch is its own ``.npz`` file (row indices + features), written through
:func:`embedcyto.fsio.atomic_write` (temporary name, fsync, rename): a batch file either exists
whole or not at all. ``manifest.json`` records the provenance the extraction started with, so a
later run can tell whether the batches may be reused. A batch file that is damaged anyway (a
disk error, a hand edit) is dropped and its rows recomputed: it never stops a run.
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
from embedcyto.fsio import TMP_INFIX, atomic_write, atomic_write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PARTIAL_FORMAT = "embedcyto-partial"
PARTIAL_VERSION = 1
_BATCH = re.compile(r"^batch-(\d+)-rows\d+-\d+\.npz$")
DISCARD_MARKER = ".discard-"


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
        atomic_write_json(self.manifest_path, body, indent=1)
        self._next_seq = 0

    def discard(self) -> None:
        """Remove the folder and everything in it; idempotent, and safe to interrupt.

        The folder is first renamed out of the way in one step, so a process killed while
        deleting leaves a ``*.discard-*`` folder nobody reads (removed by :meth:`clean_leftovers`)
        rather than a half-deleted partial extraction.
        """
        self._next_seq = None
        if not self.folder.exists():
            return
        trash = self.folder.with_name(f"{self.folder.name}{DISCARD_MARKER}{os.getpid()}")
        os.replace(self.folder, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def clean_leftovers(self) -> None:
        """Remove folders of interrupted discards (the caller holds the store's lock)."""
        for trash in self.folder.parent.glob(f"{self.folder.name}{DISCARD_MARKER}*"):
            shutil.rmtree(trash, ignore_errors=True)

    def _batch_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if _BATCH.match(p.name))

    def clean_tmp(self) -> None:
        """Delete temporary files left by a process killed mid-write (caller holds the lock)."""
        if self.folder.is_dir():
            for pattern in (f".*{TMP_INFIX}*", "*.tmp"):  # embedcyto's and older versions'
                for path in self.folder.glob(pattern):
                    path.unlink(missing_ok=True)

    def _load(self, path: Path, n_rows: int, dim: int | None, *, with_features: bool):
        """(rows, features or None) of one batch; None if the file is damaged or inconsistent.

        With ``with_features`` the features are checked too: shape ``(len(rows), dim)``,
        floating point, finite.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                rows = np.asarray(data["rows"])
                feats = np.asarray(data["features"]) if with_features else None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            return self._reject(path, str(err))
        if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
            return self._reject(path, f"row indices of shape {rows.shape} {rows.dtype}")
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= n_rows or
                          len(np.unique(rows)) != len(rows)):
            return self._reject(path, "row indices out of range or repeated")
        if feats is not None:
            width = feats.shape[1] if feats.ndim == 2 else None
            if feats.ndim != 2 or len(feats) != len(rows) or (dim is not None and width != dim):
                return self._reject(path, f"features of shape {feats.shape}")
            if feats.dtype.kind != "f" or not np.isfinite(feats).all():
                return self._reject(path, "non-finite or non-float features")
        return rows, feats

    @staticmethod
    def _reject(path: Path, why: str) -> None:
        log.warning("ignoring damaged batch file %s (%s); its rows will be recomputed", path, why)

    def done_mask(self, n_rows: int, *, dim: int | None = None,
                  drop_damaged: bool = False) -> np.ndarray:
        """Boolean mask of rows already saved in batch files.

        With ``drop_damaged`` (the writer, holding the lock) every batch is read in full and a
        damaged one is deleted, so its rows become pending again instead of failing the commit.
        """
        mask = np.zeros(n_rows, dtype=bool)
        for path in self._batch_files():
            loaded = self._load(path, n_rows, dim, with_features=drop_damaged)
            if loaded is None:
                if drop_damaged:
                    path.unlink(missing_ok=True)
                continue
            mask[loaded[0]] = True
        return mask

    def fill(self, out: np.ndarray) -> np.ndarray:
        """Copy every valid saved batch into ``out`` (rows x dim); returns the filled rows' mask."""
        mask = np.zeros(len(out), dtype=bool)
        for path in self._batch_files():
            loaded = self._load(path, len(out), out.shape[1], with_features=True)
            if loaded is None:
                continue
            rows, feats = loaded
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
        atomic_write(path, lambda handle: np.savez(handle, rows=rows, features=features),
                     needed=rows.nbytes + features.nbytes + 1024)
        return path
