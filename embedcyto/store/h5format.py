"""The HDF5 layout of a finished store (documented field by field in docs/store.md).

Only this module and the reader know dataset names inside the file. Everything is plain HDF5:
numeric arrays, UTF-8 string arrays and scalar attributes, so h5py alone can read a store.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embedcyto.datasets.records import Dataset
from embedcyto.errors import StoreError

FORMAT_NAME = "embedcyto-features"
FORMAT_VERSION = 1
CHUNK_ROWS = 1024
DTYPES = ("float32", "float16")
# Root attributes that describe the file itself, never provenance.
FORMAT_ATTRS = ("format", "format_version", "complete", "n_rows", "provenance_keys", "json_attrs")
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


def write_store_file(
    path: Path,
    dataset: Dataset,
    features: np.ndarray,
    provenance: dict[str, Any],
    *,
    compression: str | None = None,
    table: RowTable | None = None,
) -> None:
    """Write a complete store to ``path`` (a temporary name) and fsync it.

    ``complete`` is set last, after every array, so a file is never marked complete unless
    everything before it was written.

    Args:
        table: the per-row arrays, when they do not come from ``dataset.records`` (merging
            shards rebuilds them from the shard files; ``dataset`` then only gives the label
            spaces and hierarchy).
    """
    table = row_table(dataset) if table is None else table
    if table.n_rows != len(features):
        raise StoreError(f"{table.n_rows} rows but {len(features)} feature rows")
    n, dim = features.shape
    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["complete"] = False
        dset = f.create_dataset(
            "features",
            shape=(n, dim),
            dtype=features.dtype,
            chunks=(min(n, CHUNK_ROWS), dim),
            compression=compression,
            **_early_allocation(compression),
        )
        for start in range(0, n, CHUNK_ROWS):
            dset[start : start + CHUNK_ROWS] = features[start : start + CHUNK_ROWS]
        f.flush()
        _write_rows(f, table)
        _write_label_spaces(f, dataset)
        _write_attrs(f, provenance, n_rows=n)
        f.attrs["complete"] = True
        f.flush()
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _early_allocation(compression: str | None) -> dict[str, Any]:
    """Allocate every uncompressed chunk at creation, back to back in row order.

    Chunks allocated lazily can land after other data, which stops readers from mapping the
    whole matrix with one ``np.memmap`` (``load_features(mmap=True)``).
    """
    if compression is not None:
        return {}
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return {"dcpl": dcpl, "fill_time": "never"}


def _strings(f: h5py.Group, name: str, values) -> None:
    f.create_dataset(name, data=np.array(list(values), dtype=object), dtype=STR)


def _write_rows(f: h5py.File, table: RowTable) -> None:
    _strings(f, "image_id", table.ids.tolist())
    f.create_dataset("label", data=table.labels)
    _strings(f, "split", table.splits.tolist())
    _strings(f, "group", table.groups.tolist())
    if table.levels is not None:
        f.create_dataset("levels", data=table.levels)


def _write_label_spaces(f: h5py.File, dataset: Dataset) -> None:
    _strings(f, "classes", dataset.classes)
    spaces = f.create_group("label_spaces")
    for name, space in sorted(dataset.label_spaces.items()):
        _strings(spaces, name, space.classes)
    if dataset.level_names:
        _strings(f, "level_names", dataset.level_names)
    maps = f.create_group("level_maps")
    for name, mapping in sorted(dataset.level_maps.items()):
        maps.create_dataset(name, data=np.asarray(mapping, dtype=np.int64).reshape(-1))
    hier = f.create_group("hierarchy")
    children = sorted(dataset.hierarchy)
    _strings(hier, "child", children)
    _strings(hier, "parent", [dataset.hierarchy[c] for c in children])


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
