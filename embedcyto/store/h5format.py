"""The HDF5 layout of a finished store (documented field by field in docs/store.md).

Only this module, the integrity checks and the reader know dataset names inside the file.
Everything is plain HDF5: numeric arrays, UTF-8 string arrays and scalar attributes, so h5py
alone can read a store.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from embedcyto.datasets.records import Dataset
from embedcyto.errors import StoreError
from embedcyto.fsio import atomic_write
from embedcyto.store.integrity import (
    INTEGRITY_ATTR,
    REBUILD_FIX,
    UNVERIFIED,
    compute_integrity,
    damaged,
    quick_check,
)

log = logging.getLogger(__name__)

FORMAT_NAME = "embedcyto-features"
FORMAT_VERSION = 1
CHUNK_ROWS = 1024
DTYPES = ("float32", "float16")
# Root attributes that describe the file itself, never provenance.
FORMAT_ATTRS = ("format", "format_version", "complete", "n_rows", "provenance_keys", "json_attrs",
                INTEGRITY_ATTR)
STR = h5py.string_dtype("utf-8")


@dataclass(frozen=True)
class RowTable:
    """Per-row metadata of a dataset, in record order, as arrays ready for HDF5."""

    ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    groups: np.ndarray
    levels: np.ndarray | None

    @property
    def n_rows(self) -> int:
        return len(self.ids)


def row_table(dataset: Dataset) -> RowTable:
    """Arrays of ids, labels, splits, groups and levels (``""`` where split/group is unset).

    Raises:
        StoreError: no records, duplicate ids, or levels of the wrong length.
    """
    records = dataset.records
    if not records:
        raise StoreError(f"dataset {dataset.name!r} has no records: nothing to store")
    ids = np.array([r.path for r in records], dtype=str)
    if len(set(ids.tolist())) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids.tolist() if i in seen or seen.add(i))
        raise StoreError(
            f"dataset {dataset.name!r} lists image {dup!r} twice; row ids must be unique"
        )
    levels = None
    if dataset.level_names:
        n_levels = len(dataset.level_names)
        rows = [tuple(r.levels) if r.levels is not None else (-1,) * n_levels for r in records]
        bad = next((r.path for r, lv in zip(records, rows) if len(lv) != n_levels), None)
        if bad is not None:
            raise StoreError(
                f"record {bad!r} does not have {n_levels} levels ({dataset.level_names})"
            )
        levels = np.asarray(rows, dtype=np.int64).reshape(len(records), n_levels)
    return RowTable(
        ids=ids,
        labels=np.array([r.label for r in records], dtype=np.int64),
        splits=np.array([r.split or "" for r in records], dtype=str),
        groups=np.array([r.group or "" for r in records], dtype=str),
        levels=levels,
    )


def rows_sha256(dataset: Dataset) -> str:
    """A hash of the row table and label spaces: which row holds which image, label and split.

    Unlike ``Dataset.fingerprint`` it touches no file, so it is cheap to recompute on every open,
    and it guarantees batches written by an earlier run line up with the same rows.
    """
    digest = hashlib.sha256()
    meta = [dataset.name, list(dataset.classes), list(dataset.level_names)]
    digest.update(json.dumps(meta).encode())
    for r in dataset.records:
        row = [r.path, r.label, r.split, r.group, list(r.levels) if r.levels is not None else None]
        digest.update(json.dumps(row).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class StoreLabels:
    """What the labels mean: class names per label space, levels and hierarchy.

    Everything a store holds besides its rows, so a store can be written from a dataset or from
    other stores (merging shards) alike.
    """

    classes: tuple[str, ...]
    label_spaces: dict[str, tuple[str, ...]] = field(default_factory=dict)
    level_names: tuple[str, ...] = ()
    level_maps: dict[str, tuple[int, ...]] = field(default_factory=dict)
    hierarchy: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, source: Any) -> StoreLabels:
        """From a ``Dataset`` (label spaces as ``LabelSpace``) or a read ``Features``."""
        spaces = {name: tuple(getattr(space, "classes", space))
                  for name, space in source.label_spaces.items()}
        return cls(classes=tuple(source.classes), label_spaces=spaces,
                   level_names=tuple(source.level_names),
                   level_maps={k: tuple(int(x) for x in np.asarray(v).reshape(-1))
                               for k, v in source.level_maps.items()},
                   hierarchy=dict(source.hierarchy))


def write_store_file(
    path: Path,
    table: RowTable,
    labels: StoreLabels,
    features: np.ndarray,
    provenance: dict[str, Any],
    *,
    compression: str | None = None,
) -> None:
    """Write a complete store to ``path`` atomically and durably (through :mod:`embedcyto.fsio`).

    The file is assembled in memory, numeric datasets with Fletcher-32 checksums on every chunk
    and an ``integrity`` record of SHA-256 digests of every dataset, then written with
    :func:`embedcyto.fsio.atomic_write`: HDF5 never writes to the disk itself, so a full disk is
    one :class:`embedcyto.fsio.DiskFullError` (no temporary file left, ``path`` untouched), not
    an HDF5 library left in a broken state. ``complete`` is set last, after the integrity record.
    """
    if table.n_rows != len(features):
        raise StoreError(f"{table.n_rows} rows but {len(features)} feature rows")
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["complete"] = False
        n, dim = features.shape
        f.create_dataset("features", data=features, chunks=(max(1, min(n, CHUNK_ROWS)), dim),
                         compression=compression, **_checksum(n * dim))
        _write_rows(f, table)
        _write_labels(f, labels)
        _write_attrs(f, provenance, n_rows=n)
        record = compute_integrity(f, read_provenance(f.attrs), features)
        f.attrs[INTEGRITY_ATTR] = json.dumps(record, sort_keys=True)
        f.attrs["complete"] = True
    data = buffer.getbuffer()
    atomic_write(path, lambda handle: handle.write(data), needed=len(data))


def _checksum(size: int) -> dict[str, Any]:
    """Fletcher-32 on every chunk (HDF5 cannot chunk an empty dataset: those go without)."""
    return {"fletcher32": True} if size else {}


def _strings(f: h5py.Group, name: str, values) -> None:
    """Variable-length UTF-8 (HDF5 filters cannot apply to it: the SHA-256 digest covers it)."""
    f.create_dataset(name, data=np.array(list(values), dtype=object), dtype=STR)


def _numbers(f: h5py.Group, name: str, values: np.ndarray) -> None:
    f.create_dataset(name, data=values, **_checksum(values.size))


def _write_rows(f: h5py.File, table: RowTable) -> None:
    _strings(f, "image_id", table.ids.tolist())
    _numbers(f, "label", np.asarray(table.labels, dtype=np.int64))
    _strings(f, "split", table.splits.tolist())
    _strings(f, "group", table.groups.tolist())
    if table.levels is not None:
        _numbers(f, "levels", np.asarray(table.levels, dtype=np.int64))


def _write_labels(f: h5py.File, labels: StoreLabels) -> None:
    _strings(f, "classes", labels.classes)
    spaces = f.create_group("label_spaces")
    for name, classes in sorted(labels.label_spaces.items()):
        _strings(spaces, name, classes)
    if labels.level_names:
        _strings(f, "level_names", labels.level_names)
    maps = f.create_group("level_maps")
    for name, mapping in sorted(labels.level_maps.items()):
        _numbers(maps, name, np.asarray(mapping, dtype=np.int64).reshape(-1))
    hier = f.create_group("hierarchy")
    children = sorted(labels.hierarchy)
    _strings(hier, "child", children)
    _strings(hier, "parent", [labels.hierarchy[c] for c in children])


def _write_attrs(f: h5py.File, provenance: dict[str, Any], *, n_rows: int) -> None:
    """Provenance keys become root attributes; nested values or None are JSON strings."""
    clash = sorted(set(provenance) & set(FORMAT_ATTRS))
    if clash:
        raise StoreError(f"provenance keys {clash} are reserved by the store format; rename them")
    json_keys = []
    for key, value in provenance.items():
        if isinstance(value, (str, bool, int, float)):
            f.attrs[key] = value
        else:
            f.attrs[key] = json.dumps(value, sort_keys=True)
            json_keys.append(key)
    f.attrs["n_rows"] = n_rows
    f.attrs["provenance_keys"] = json.dumps(sorted(provenance))
    f.attrs["json_attrs"] = json.dumps(sorted(json_keys))


def decode_attr(value: Any) -> Any:
    """An attribute as a plain Python value (numpy scalars become int/float/bool, bytes str)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def read_provenance(attrs: h5py.AttributeManager) -> dict[str, Any]:
    """The provenance dict a store was written with, exactly as it was passed in."""
    try:
        keys = json.loads(decode_attr(attrs["provenance_keys"]))
        json_keys = set(json.loads(decode_attr(attrs["json_attrs"])))
        out = {}
        for key in keys:
            value = decode_attr(attrs[key])
            out[key] = json.loads(value) if key in json_keys else value
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise StoreError(f"the store's provenance attributes are malformed ({err})") from err
    return out


def open_store_file(path: str | os.PathLike, *, require_complete: bool = True,
                    check: bool = True):
    """Open a store for reading after checking it is a complete, undamaged embedcyto store.

    A context manager yielding the open ``h5py.File``. With ``check`` the cheap integrity check
    runs (:func:`embedcyto.store.integrity.quick_check`: structure, shapes, provenance and
    row-metadata digests); callers that read the features run the full check themselves.

    Raises:
        StoreError: missing, interrupted, not HDF5, not an embedcyto store, or a newer format
            version; :class:`embedcyto.errors.DamagedStoreError` when a check fails.
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no feature store at {path}")
    return _open(path, require_complete, check)


@contextmanager
def _open(path: Path, require_complete: bool, check: bool) -> Iterator[h5py.File]:
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise StoreError(
            f"{path} is not a readable HDF5 file ({str(err).splitlines()[0]}); if it is a "
            f"feature store it is damaged: {REBUILD_FIX}"
        ) from err
    with handle as f:
        _check_format(f, path, require_complete)
        if check:
            verified = quick_check(f, path, read_provenance(f.attrs), store_rows(f, path))
            if not verified:
                log.warning("%s: %s", path, UNVERIFIED)
        yield f


def _check_format(f: h5py.File, path: Path, require_complete: bool) -> None:
    fmt = decode_attr(f.attrs.get("format"))
    if fmt != FORMAT_NAME:
        raise StoreError(
            f"{path} is an HDF5 file but not an embedcyto feature store (format={fmt!r})"
        )
    version = decode_attr(f.attrs.get("format_version"))
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreError(
            f"{path} has store format version {version!r}; this embedcyto reads up to version "
            f"{FORMAT_VERSION}: upgrade embedcyto"
        )
    if require_complete and not decode_attr(f.attrs.get("complete", False)):
        raise StoreError(
            f"{path} is incomplete: its extraction was interrupted; re-run the same "
            f"`embedcyto extract` command to resume it"
        )


def store_rows(f: h5py.File, path: Path) -> int:
    """The ``n_rows`` attribute, refused when it is not a row count."""
    n = decode_attr(f.attrs.get("n_rows"))
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise damaged(path, f"its n_rows attribute is {n!r}")
    return n


def read_store_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The provenance of a complete store (attributes and the quick check only)."""
    with open_store_file(path) as f:
        return read_provenance(f.attrs)
