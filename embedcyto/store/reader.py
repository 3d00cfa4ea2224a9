"""Reading a finished store into arrays and metadata (:class:`Features`).

Every read is verified: the cheap checks when the file is opened and, since the features are
read anyway, their checksums, digest and finite values too (see :mod:`.integrity`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embedcyto.datasets.records import SPLITS
from embedcyto.errors import StoreError
from embedcyto.store.catalog import missing_store_message
from embedcyto.store.h5format import open_store_file, read_provenance, store_rows
from embedcyto.store.integrity import UNVERIFIED, check_finite, full_check, read_features
from embedcyto.store.paths import resolve_store_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Features:
    """The rows of one store and what they mean.

    Arrays (read-only, one entry per row, in dataset order): ``X`` [n, dim] features,
    ``labels`` (indices into ``classes``), ``ids`` (image paths relative to the dataset root),
    ``splits`` and ``groups`` ("" where unset), ``levels`` [n, n_levels] (-1 = no label at that
    level) or None. Metadata: ``classes``, ``label_spaces`` (name -> class names),
    ``level_names``, ``level_maps`` (level -> primary class index -> class index at that level),
    ``hierarchy`` (child -> parent class), ``provenance`` (how the features were made) and
    ``path`` (the store file).
    """

    X: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    splits: np.ndarray
    groups: np.ndarray
    levels: np.ndarray | None
    classes: tuple[str, ...]
    label_spaces: dict[str, tuple[str, ...]]
    level_names: tuple[str, ...]
    level_maps: dict[str, tuple[int, ...]]
    hierarchy: dict[str, str]
    provenance: dict[str, Any]
    path: Path

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dataset(self) -> str:
        return self.provenance.get("dataset", "")

    @property
    def model(self) -> str:
        return self.provenance.get("model", "")

    def __repr__(self) -> str:
        """A one-line summary: the arrays can hold millions of numbers."""
        counts = {s: int(n) for s, n in zip(*np.unique(self.splits, return_counts=True))}
        dim = self.X.shape[1] if self.X.ndim == 2 else 0
        return (f"Features(dataset={self.dataset!r}, model={self.model!r}, rows={len(self)}, "
                f"dim={dim}, classes={len(self.classes)}, splits={counts}, "
                f"levels={list(self.level_names)}, path={str(self.path)!r})")

    def subset(self, split: str) -> Features:
        """The rows of one split (same metadata). An empty known split gives zero rows.

        Raises:
            StoreError: ``split`` is neither a standard split nor one present in the store.
        """
        present = sorted(set(self.splits.tolist()) - {""})
        if split not in SPLITS and split not in present:
            raise StoreError(f"unknown split {split!r}; this store has splits {present}")
        return self.take(self.splits == split)

    def take(self, rows) -> Features:
        """A Features holding only ``rows`` (a boolean mask or integer indices)."""

        def pick(a):
            return None if a is None else _readonly(np.asarray(a[rows]))

        return dataclasses.replace(
            self,
            X=pick(self.X),
            labels=pick(self.labels),
            ids=pick(self.ids),
            splits=pick(self.splits),
            groups=pick(self.groups),
            levels=pick(self.levels),
        )


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def open_checked(path: str | os.PathLike):
    """:func:`h5format.open_store_file`, with the listing of what exists when ``path`` does not."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(missing_store_message(path))
    return open_store_file(path, check=False)


def _strings(node) -> np.ndarray:
    return np.array(node.asstr()[()].tolist(), dtype=str).reshape(-1)


def _read_meta(f: h5py.File) -> dict[str, Any]:
    hier = f.get("hierarchy")
    children = _strings(hier["child"]).tolist() if hier is not None else []
    parents = _strings(hier["parent"]).tolist() if hier is not None else []
    return {
        "classes": tuple(_strings(f["classes"]).tolist()),
        "label_spaces": {
            k: tuple(_strings(v).tolist()) for k, v in f.get("label_spaces", {}).items()
        },
        "level_names": tuple(_strings(f["level_names"]).tolist()) if "level_names" in f else (),
        "level_maps": {k: tuple(int(x) for x in v[()]) for k, v in f.get("level_maps", {}).items()},
        "hierarchy": dict(zip(children, parents)),
    }


def _read_features(path: Path, f: h5py.File, mmap: bool) -> np.ndarray:
    dset = f["features"]
    if mmap:
        mapped = _memmap(path, dset)
        if mapped is not None:
            return mapped
        log.info("%s: features are checksummed, compressed or scattered on disk; reading them "
                 "into memory", path)
    return _readonly(read_features(f, path))


def _memmap(path: Path, dset: h5py.Dataset) -> np.ndarray | None:
    """Map the features without reading them, when their bytes form one contiguous block.

    True for uncompressed contiguous datasets and for uncompressed full-width row chunks stored
    in row order back to back (what the writer produces); otherwise None.
    """
    if dset.compression or dset.shuffle or dset.fletcher32 or dset.scaleoffset:
        return None
    n, dim = dset.shape
    if dset.chunks is None:
        offset = dset.id.get_offset()
    else:
        offset = _chunk_block_offset(dset)
    if offset is None:
        return None
    return np.memmap(path, mode="r", dtype=dset.dtype, offset=offset, shape=(n, dim))


def _chunk_block_offset(dset: h5py.Dataset) -> int | None:
    n, dim = dset.shape
    rows, cols = dset.chunks
    if cols != dim:
        return None
    chunk_bytes = rows * dim * dset.dtype.itemsize
    n_chunks = -(-n // rows)
    try:
        if dset.id.get_num_chunks() != n_chunks:
            return None
        first = None
        for i in range(n_chunks):
            info = dset.id.get_chunk_info(i)
            first = info.byte_offset if first is None else first
            if (
                tuple(info.chunk_offset) != (i * rows, 0)
                or info.byte_offset != first + i * chunk_bytes
                or info.size != chunk_bytes
                or info.filter_mask != 0
            ):
                return None
    except (AttributeError, RuntimeError, ValueError):
        return None  # an HDF5 without chunk queries: fall back to reading
    return first


def load_features(
    store: str | os.PathLike | None = None,
    dataset: str | Any = None,
    model: str | None = None,
    *,
    split: str | None = None,
    store_dir: str | os.PathLike | None = None,
    mmap: bool = False,
) -> Features:
    """Read a store: features, per-row metadata, label spaces and provenance.

    Args:
        store: a ``.h5`` store file, or a store folder (then ``dataset`` and ``model`` are
            required). None: use ``store_dir`` or the default folder (``EMBEDCYTO_STORE`` or
            ``./cache``).
        dataset: dataset name (or a ``Dataset``); checked against the file when both are given.
        model: model name; checked against the file when both are given.
        split: keep only this split's rows.
        store_dir: the store folder when ``store`` is None.
        mmap: map the features from disk instead of reading them (falls back to reading when
            the file's layout does not allow it, e.g. compressed features).
    """
    dataset_name = getattr(dataset, "name", dataset)
    path = resolve_store_file(store, dataset_name, model, store_dir=store_dir)
    with open_checked(path) as f:
        provenance = read_provenance(f.attrs)
        for key, wanted in (("dataset", dataset_name), ("model", model)):
            if wanted and provenance.get(key) not in (None, wanted):
                raise StoreError(f"{path} holds {key} {provenance.get(key)!r}, not {wanted!r}")
        n = store_rows(f, path)
        X = _read_features(path, f, mmap)
        if not full_check(f, path, provenance, n, features=X):
            log.warning("%s: %s", path, UNVERIFIED)
        rows = {
            "labels": _readonly(np.asarray(f["label"][()], dtype=np.int64)),
            "ids": _readonly(_strings(f["image_id"])),
            "splits": _readonly(_strings(f["split"])),
            "groups": _readonly(_strings(f["group"])),
            "levels": (
                _readonly(np.asarray(f["levels"][()], dtype=np.int64)) if "levels" in f else None
            ),
        }
        meta = _read_meta(f)
    features = Features(X=X, **rows, **meta, provenance=provenance, path=path)
    return features.subset(split) if split is not None else features


def validate_features(features: Features) -> Features:
    """Check arrays brought into embedcyto from elsewhere: shapes agree, values are finite.

    The checks :func:`load_features` applies to a store, for features that did not come from one
    (an imported matrix, arrays built in a script). Returns ``features`` unchanged.

    Raises:
        StoreError: per-row arrays of different lengths, features not 2-D, or labels outside
            the classes; :class:`embedcyto.errors.DamagedStoreError` for NaN or infinite values
            (naming the rows and their ids).
    """
    X = np.asarray(features.X)
    n = len(features.ids)
    if X.ndim != 2 or len(X) != n:
        raise StoreError(f"features have shape {X.shape} for {n} row ids; expected ({n}, dim)")
    for name in ("labels", "splits", "groups", "levels"):
        values = getattr(features, name)
        if values is not None and len(values) != n:
            raise StoreError(f"{name} has {len(values)} entries for {n} rows")
    labels = np.asarray(features.labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(features.classes)):
        raise StoreError(f"labels must index the {len(features.classes)} classes, got "
                         f"{labels.min()}..{labels.max()}")
    check_finite(X, features.ids, where=str(features.path))
    return features


@dataclass(frozen=True)
class Verification:
    """What :func:`verify_store` found: ``verified`` is False for a store without checksums."""

    path: Path
    rows: int
    dim: int
    verified: bool

    @property
    def status(self) -> str:
        state = "verified" if self.verified else UNVERIFIED
        return f"{self.path}: {self.rows} rows x {self.dim}, {state}"


def verify_store(path: str | os.PathLike) -> Verification:
    """The full integrity check of one store: every checksum, digest, shape and value.

    Raises:
        StoreError: missing or not a store; :class:`embedcyto.errors.DamagedStoreError` naming
            what is wrong and the fix.
    """
    path = Path(path)
    with open_checked(path) as f:
        provenance = read_provenance(f.attrs)
        n = store_rows(f, path)
        verified = full_check(f, path, provenance, n)
        dim = int(f["features"].shape[1])
    return Verification(path=path, rows=n, dim=dim, verified=verified)
