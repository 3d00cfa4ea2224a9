"""Resumable, locked writing of one store, published atomically.

Life of a writer (see docs/store.md, "Writing"):

1. take the store's lock (one writer at a time; the lock dies with the process);
2. a finished store with the same identity that passes the full integrity check is a cache hit:
   nothing pending, ``commit`` is a no-op; a damaged one is refused (rebuild with ``force``); one
   with another identity is refused (:class:`StaleStoreError`) unless ``force`` or an
   interrupted rebuild with exactly the requested inputs exists (then that rebuild resumes);
3. otherwise finished batches go to ``<store>.h5.partial/`` one file each, so a killed run
   resumes with only the missing rows; ``force`` always starts from an empty partial folder;
4. ``commit`` writes the HDF5 file through :func:`embedcyto.fsio.atomic_write` (temporary file,
   fsync, rename), then removes the partial folder. An old store stays readable until that
   rename, and whatever a kill between the two leaves behind is removed by the next writer.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from embedcyto.datasets.records import Dataset
from embedcyto.errors import StaleStoreError, StoreError
from embedcyto.fsio import remove_stale_tmp
from embedcyto.store import provenance as prov
from embedcyto.store.h5format import (
    DTYPES,
    StoreLabels,
    read_store_provenance,
    row_table,
    rows_sha256,
    write_store_file,
)
from embedcyto.store.lock import StoreLock
from embedcyto.store.partial import PartialFolder
from embedcyto.store.paths import TMP_MARKER, lock_path, partial_dir
from embedcyto.store.reader import verify_store

log = logging.getLogger(__name__)

_FIX = (
    "pass `force=True` to rebuild it (the old store stays until the new one is complete), or "
    "write to another store folder (`store_dir=`)"
)


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string (what ``created_at`` holds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def complete_provenance(path: str | os.PathLike, dataset: Dataset, provenance: dict[str, Any], *,
                        embed_dim: int, dtype: str) -> dict[str, Any]:
    """The caller's provenance plus what the writer itself knows, checked for conflicts.

    Adds ``dataset``, ``model`` (default: the file stem), ``dtype``, ``embed_dim``,
    ``rows_sha256``, ``generated_data`` (True whenever the dataset is generated, whatever the
    caller says) and, when absent, ``dataset_fingerprint``: exactly the provenance a store
    written at ``path`` will hold, so it can be compared with an existing store beforehand.
    """
    full = prov.normalize(provenance)
    implied = {
        "dataset": dataset.name,
        "model": full.get("model") or Path(path).stem,
        "dtype": str(dtype),
        "embed_dim": int(embed_dim),
    }
    for key, value in implied.items():
        if key in full and full[key] != value:
            raise StoreError(
                f"provenance says {key}={full[key]!r} but the writer was given {value!r}"
            )
        full[key] = value
    card = full.get("card")
    if isinstance(card, dict) and card.get("embed_dim") not in (None, int(embed_dim)):
        raise StoreError(f"the card {card.get('name')!r} gives {card['embed_dim']}-wide "
                         f"features but the writer was given embed_dim={embed_dim}")
    full["rows_sha256"] = rows_sha256(dataset)
    full[prov.GENERATED_DATA] = bool(dataset.generated or full.get(prov.GENERATED_DATA) is True)
    if "dataset_fingerprint" not in full:
        full["dataset_fingerprint"] = dataset.fingerprint()
    return full


class FeatureWriter:
    """Writes the features of ``dataset.records`` (in order) into the store at ``path``.

    The lock is taken on construction and released by :meth:`close` (or leaving the ``with``
    block). Call :meth:`commit` once :meth:`pending_rows` is empty; leaving without commit keeps
    the finished batches for the next run.

    Args:
        path: the store file (``store_path(store_dir, dataset.name, model)``).
        dataset: rows are ``dataset.records`` in order; ids, labels, splits... are stored.
        provenance: JSON-able description of how the features are made. The writer adds
            ``dataset``, ``model`` (default: the file stem), ``dtype``, ``embed_dim``,
            ``rows_sha256`` and, when absent, ``dataset_fingerprint``.
        embed_dim: width of each feature row.
        dtype: "float32" (default) or "float16" on disk.
        force: rebuild a finished store or discard a partial one whose identity differs.
        compression: None (default, fastest) or "gzip" for the features array.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        dataset: Dataset,
        provenance: dict[str, Any],
        embed_dim: int,
        dtype: str = "float32",
        force: bool = False,
        compression: str | None = None,
    ):
        if dtype not in DTYPES:
            raise StoreError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if (
            isinstance(embed_dim, bool)
            or not isinstance(embed_dim, (int, np.integer))
            or embed_dim < 1
        ):
            raise StoreError(f"embed_dim must be a positive integer, got {embed_dim!r}")
        if compression not in (None, "gzip"):
            raise StoreError(f"compression must be None or 'gzip', got {compression!r}")
        self.path = Path(path)
        self.dataset = dataset
        self.embed_dim = int(embed_dim)
        self.dtype = np.dtype(dtype)
        self.compression = compression
        self.n_rows = row_table(dataset).n_rows
        self.provenance = self._full_provenance(provenance)
        self.is_cache_hit = False
        self.resumed_rows = 0
        self._done = np.zeros(self.n_rows, dtype=bool)
        self._committed = False
        self._partial = PartialFolder(partial_dir(self.path))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = StoreLock(lock_path(self.path), self.path).acquire()
        try:
            self._prepare(force)
        except BaseException:
            self._lock.release()
            raise

    def _full_provenance(self, provenance: dict[str, Any]) -> dict[str, Any]:
        return complete_provenance(self.path, self.dataset, provenance,
                                   embed_dim=self.embed_dim, dtype=self.dtype.name)

    def _prepare(self, force: bool) -> None:
        self._clean_leftovers()
        if self.path.exists() and not force:
            diffs = prov.differences(self._finished_provenance(), self.provenance)
            if not diffs:
                self._verify_cache_hit()
                return
            if self._matching_partial() is None:
                raise StaleStoreError(
                    f"{self.path} was made from other inputs than requested "
                    f"({prov.describe_differences(diffs)}); {_FIX}"
                )
            log.info("%s: resuming the interrupted rebuild with these inputs (the old store "
                     "stays until it is complete)", self.path)
        self._open_partial(force)

    def _clean_leftovers(self) -> None:
        """Remove what killed processes left: temporary files and half-discarded folders."""
        for leftover in self.path.parent.glob(self.path.name + TMP_MARKER + "*"):
            leftover.unlink(missing_ok=True)  # a commit of an older embedcyto killed early
        remove_stale_tmp(self.path.parent, self.path.name)
        self._partial.clean_leftovers()

    def _verify_cache_hit(self) -> None:
        """A cache hit is a store verified complete: checksums, digests, shapes, finite values."""
        try:
            verify_store(self.path)
        except StoreError as err:
            raise StoreError(f"{err}. Nothing was reused") from err
        if self._partial.exists() and self._matching_partial() is not None:
            self._partial.discard()  # left by a commit killed after publishing the store
        self.is_cache_hit = True
        self._done[:] = True

    def _finished_provenance(self) -> dict[str, Any]:
        try:
            return read_store_provenance(self.path)
        except StoreError as err:
            raise StoreError(f"{err}; pass `force=True` to replace it") from err

    def _matching_partial(self) -> dict[str, Any] | None:
        """The manifest of a partial folder started with exactly these inputs, else None."""
        if not self._partial.exists():
            return None
        try:
            manifest = self._partial.read_manifest()
        except StoreError:
            return None
        if prov.differences(manifest.get("provenance", {}), self.provenance):
            return None
        return manifest

    def _open_partial(self, force: bool) -> None:
        """Resume a matching partial extraction, or start a fresh one (always with ``force``)."""
        partial = self._partial
        if partial.exists() and not force:
            try:
                manifest = partial.read_manifest()
            except StoreError as err:
                raise StoreError(f"{err}. Nothing was computed") from err
            diffs = prov.differences(manifest.get("provenance", {}), self.provenance)
            if diffs:
                raise StaleStoreError(
                    f"an unfinished extraction in {partial.folder} was started with other inputs "
                    f"({prov.describe_differences(diffs)}); pass `force=True` to discard it and "
                    f"start again, or write to another store folder (`store_dir=`)"
                )
            partial.clean_tmp()
            self._done = partial.done_mask(self.n_rows, dim=self.embed_dim, drop_damaged=True)
            self.resumed_rows = int(self._done.sum())
            log.info("resuming %s: %d/%d rows already done", self.path, self.resumed_rows,
                     self.n_rows)
            return
        partial.create(
            {"n_rows": self.n_rows, "provenance": self.provenance, "started_at": utc_now()}
        )

    def pending_rows(self) -> np.ndarray:
        """Indices (into ``dataset.records``) of rows still to compute, in order."""
        return np.flatnonzero(~self._done).astype(np.int64)

    def write(self, row_indices, features) -> None:
        """Save the features of some pending rows as one finished batch.

        Raises:
            StoreError: wrong shape, non-float values, rows out of range, repeated or already
                written, or NaN/inf values (the message names the rows and their image ids).
        """
        self._check_open()
        if self.is_cache_hit:
            raise StoreError(f"{self.path} is complete (cache hit): there is nothing to write")
        rows = np.asarray(row_indices)
        if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
            raise StoreError(
                f"row indices must be a 1-D integer array, got shape {rows.shape} {rows.dtype}"
            )
        rows = rows.astype(np.int64)
        try:
            feats = np.asarray(features)
        except (TypeError, RuntimeError) as err:  # e.g. a bfloat16 or GPU tensor
            raise StoreError(
                f"features must be convertible to a numpy array ({err}); pass "
                f"`tensor.float().cpu().numpy()`"
            ) from err
        if feats.shape != (len(rows), self.embed_dim):
            raise StoreError(
                f"features must have shape ({len(rows)}, {self.embed_dim}) for {len(rows)} rows, "
                f"got {feats.shape}"
            )
        if rows.size == 0:
            return
        if feats.dtype.kind != "f":
            raise StoreError(f"features must be floating point, got {feats.dtype}")
        self._check_rows(rows)
        self._check_finite(rows, feats, "NaN or infinite values")
        with np.errstate(over="ignore"):  # overflow is reported just below, with the rows
            cast = feats.astype(self.dtype, copy=False)
        self._check_finite(rows, cast, f"values too large for {self.dtype.name} (use float32)")
        self._partial.save_batch(rows, cast)
        self._done[rows] = True

    def _check_rows(self, rows: np.ndarray) -> None:
        if rows.min() < 0 or rows.max() >= self.n_rows:
            raise StoreError(
                f"row indices must be in [0, {self.n_rows}), got {rows.min()}..{rows.max()}"
            )
        if len(np.unique(rows)) != len(rows):
            raise StoreError("a batch lists the same row twice")
        already = rows[self._done[rows]]
        if already.size:
            raise StoreError(
                f"rows {already[:5].tolist()} were already written; write only pending_rows()"
            )

    def _check_finite(self, rows: np.ndarray, feats: np.ndarray, what: str) -> None:
        bad = rows[~np.isfinite(feats).all(axis=1)]
        if bad.size:
            ids = [self.dataset.records[i].path for i in bad[:5]]
            raise StoreError(
                f"{what} in {bad.size} row(s) {bad[:5].tolist()} (images {ids}); nothing was saved "
                f"for this batch: check the model's precision or those images"
            )

    def commit(self) -> Path:
        """Publish the finished store atomically (a no-op on a cache hit); returns its path."""
        self._check_open()
        if self.is_cache_hit or self._committed:
            return self.path
        missing = self.pending_rows()
        if missing.size:
            raise StoreError(
                f"cannot commit {self.path}: {missing.size} of {self.n_rows} rows are still "
                f"missing (first: {missing[:5].tolist()}); write every pending row first"
            )
        features = np.empty((self.n_rows, self.embed_dim), dtype=self.dtype)
        if not self._partial.fill(features).all():
            raise StoreError(
                f"batch files in {self._partial.folder} disappeared while writing; re-run the "
                f"same command to recompute the missing rows"
            )
        final = dict(self.provenance, created_at=utc_now())
        if self.resumed_rows:
            final["rows_resumed"] = self.resumed_rows
        write_store_file(self.path, row_table(self.dataset), StoreLabels.of(self.dataset),
                         features, final, compression=self.compression)
        self._partial.discard()
        self._committed = True
        self.provenance = final
        return self.path

    def _check_open(self) -> None:
        if not self._lock.held:
            raise StoreError(f"the writer of {self.path} is closed; open a new one")

    def close(self) -> None:
        """Release the lock; uncommitted batches stay on disk for the next run."""
        self._lock.release()

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_writer(
    path: str | os.PathLike,
    *,
    dataset: Dataset,
    provenance: dict[str, Any],
    embed_dim: int,
    dtype: str = "float32",
    force: bool = False,
    compression: str | None = None,
) -> FeatureWriter:
    """Open (lock, check, maybe resume) a writer; see :class:`FeatureWriter`."""
    return FeatureWriter(
        path,
        dataset=dataset,
        provenance=provenance,
        embed_dim=embed_dim,
        dtype=dtype,
        force=force,
        compression=compression,
    )
