"""Integrity of a finished store: checksums, digests, shapes and finite values.

Three layers protect a store (docs/store.md, "Integrity"):

1. every dataset is written with HDF5's Fletcher-32 filter, so HDF5 itself refuses a chunk whose
   bytes changed on disk, for any reader (plain h5py included);
2. the root attribute ``integrity`` records a SHA-256 digest of every dataset's content (ids,
   labels, splits, features...) and of the provenance attributes, so a store whose rows were
   permuted, narrowed, dropped or whose provenance was edited no longer matches;
3. shapes are checked against the provenance (``n_rows``, ``embed_dim``, the card's width) and
   features must be finite.

:func:`quick_check` runs on every open (structure, shapes, provenance and row-metadata digests:
milliseconds); :func:`full_check` adds the features digest and the finite-value check and runs
whenever the features are read, on every cache hit and in ``embedcyto store verify``.

This module knows h5py objects and plain dicts only, so every other store module may use it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import h5py
import numpy as np

from embedcyto.errors import DamagedStoreError, StoreError

INTEGRITY_ATTR = "integrity"
INTEGRITY_VERSION = 1
ALGORITHM = "sha256"
# Datasets every store has; ``levels`` and ``level_names`` come with a label hierarchy.
REQUIRED = ("features", "image_id", "label", "split", "group", "classes")
PER_ROW = ("image_id", "label", "split", "group", "levels")
_BLOCK_ROWS = 4096

REBUILD_FIX = (
    "rebuild it (a frozen model's: `embedcyto extract` with `force=True` and the same options; "
    "an adapted model's: `embedcyto lora` with `rerun=True` and the same options, features "
    "exported, which trains the run again), or delete the file"
)
UNVERIFIED = (
    "unverified: written by an embedcyto without checksums; `embedcyto store verify` checks "
    "what it can, `embedcyto extract` with `force=True` rewrites it with checksums"
)


def damaged(path: Any, what: str) -> DamagedStoreError:
    """The error for a store that fails a check: what is wrong and how to get a good one."""
    return DamagedStoreError(f"{path} is damaged: {what}; {REBUILD_FIX}")


def _digest_strings(values) -> str:
    """Length-prefixed UTF-8, so no choice of separators can make two lists hash alike."""
    h = hashlib.new(ALGORITHM)
    for value in values:
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)
    return h.hexdigest()


def array_digest(a: np.ndarray) -> str:
    """Digest of a numeric array: dtype, shape and little-endian bytes, read in row blocks."""
    h = hashlib.new(ALGORITHM)
    dtype = np.dtype(a.dtype).newbyteorder("<")
    h.update(json.dumps([dtype.str, list(a.shape)]).encode())
    for start in range(0, max(len(a), 1), _BLOCK_ROWS):
        block = np.ascontiguousarray(a[start : start + _BLOCK_ROWS], dtype=dtype)
        h.update(memoryview(block).cast("B"))
    return h.hexdigest()


def dataset_digest(dset: h5py.Dataset) -> str:
    """Digest of one HDF5 dataset's values (strings or numbers)."""
    if h5py.check_string_dtype(dset.dtype) is not None:
        return _digest_strings(dset[()].reshape(-1).tolist() if dset.shape else [dset[()]])
    return array_digest(dset)


def provenance_digest(provenance: dict[str, Any], n_rows: int) -> str:
    """Digest of the provenance attributes (as decoded) and the row count."""
    text = json.dumps({"provenance": provenance, "n_rows": int(n_rows)}, sort_keys=True)
    return hashlib.new(ALGORITHM, text.encode()).hexdigest()


def _datasets(f: h5py.File) -> dict[str, h5py.Dataset]:
    found: dict[str, h5py.Dataset] = {}
    f.visititems(lambda name, node: found.__setitem__(name, node)
                 if isinstance(node, h5py.Dataset) else None)
    return found


def compute_integrity(f: h5py.File, provenance: dict[str, Any],
                      features: np.ndarray) -> dict[str, Any]:
    """The ``integrity`` record of a store being written (``features`` from memory: no re-read)."""
    digests = {name: dataset_digest(d) for name, d in _datasets(f).items() if name != "features"}
    digests["features"] = array_digest(features)
    return {"version": INTEGRITY_VERSION, "algorithm": ALGORITHM, "datasets": digests,
            "provenance": provenance_digest(provenance, len(features))}


def read_integrity(f: h5py.File, path: Any) -> dict[str, Any] | None:
    """The store's integrity record, None for a store written before checksums existed."""
    raw = f.attrs.get(INTEGRITY_ATTR)
    if raw is None:
        return None
    try:
        record = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        if not isinstance(record.get("datasets"), dict) or "provenance" not in record:
            raise ValueError("fields missing")
    except (ValueError, AttributeError, UnicodeDecodeError) as err:
        raise damaged(path, f"its integrity record cannot be read ({err})") from err
    if record.get("version", 0) > INTEGRITY_VERSION or record.get("algorithm") != ALGORITHM:
        raise StoreError(f"{path} uses integrity record {record.get('version')!r} "
                         f"({record.get('algorithm')!r}); upgrade embedcyto to read it")
    return record


def _check_shapes(f: h5py.File, path: Any, provenance: dict[str, Any], n_rows: int) -> None:
    levels = "level_names" in f
    for name in REQUIRED + (("levels",) if levels else ()):
        if name not in f or not isinstance(f[name], h5py.Dataset):
            raise damaged(path, f"dataset {name!r} is missing")
    X = f["features"]
    if X.ndim != 2 or X.shape[0] != n_rows:
        raise damaged(path, f"features have shape {X.shape}, expected {n_rows} rows")
    for name in PER_ROW:
        if name in f and f[name].shape[:1] != (n_rows,):
            raise damaged(path, f"{name!r} has {f[name].shape[:1]} rows, expected {n_rows}")
    widths = {"provenance embed_dim": provenance.get("embed_dim")}
    card = provenance.get("card")
    if isinstance(card, dict):
        widths["the card's embed_dim"] = card.get("embed_dim")
    for source, width in widths.items():
        if width is not None and width != X.shape[1]:
            raise damaged(path, f"features are {X.shape[1]} wide but {source} is {width}")
    dtype = provenance.get("dtype")
    if dtype is not None and np.dtype(X.dtype).name != dtype:
        raise damaged(path, f"features are {np.dtype(X.dtype).name} but provenance says {dtype}")


def quick_check(f: h5py.File, path: Any, provenance: dict[str, Any], n_rows: int) -> bool:
    """Structure, shapes, provenance and every digest except the features'; milliseconds.

    Returns:
        True when the store carries an integrity record (verified), False for an older store
        without one (checked for structure only).

    Raises:
        DamagedStoreError: anything differs from what was written.
    """
    _check_shapes(f, path, provenance, n_rows)
    record = read_integrity(f, path)
    if record is None:
        return False
    if record["provenance"] != provenance_digest(provenance, n_rows):
        raise damaged(path, "its provenance attributes were changed after it was written")
    present = _datasets(f)
    for name, expected in sorted(record["datasets"].items()):
        if name not in present:
            raise damaged(path, f"dataset {name!r} is missing")
        if name != "features" and _read(present[name], path, dataset_digest) != expected:
            raise damaged(path, f"the content of {name!r} changed after it was written")
    return True


def _read(dset: h5py.Dataset, path: Any, fn):
    """Apply ``fn`` to a dataset, turning HDF5 read failures (checksum errors) into one error."""
    try:
        return fn(dset)
    except (OSError, RuntimeError, ValueError) as err:
        raise damaged(path, f"dataset {dset.name!r} cannot be read ({_first_line(err)})") from err


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def read_features(f: h5py.File, path: Any) -> np.ndarray:
    """The whole features matrix; a checksum failure in any chunk becomes a clear error."""
    return _read(f["features"], path, lambda d: d[()])


def full_check(f: h5py.File, path: Any, provenance: dict[str, Any], n_rows: int,
               features: np.ndarray | None = None) -> bool:
    """:func:`quick_check` plus the features: checksums, digest and finite values.

    Args:
        features: the features already read from ``f`` (saves reading them twice).

    Returns:
        True when verified against the integrity record, False for an older store without one
        (then structure and finite values only).
    """
    verified = quick_check(f, path, provenance, n_rows)
    X = read_features(f, path) if features is None else features
    if verified:
        expected = json.loads(_attr_text(f.attrs[INTEGRITY_ATTR]))["datasets"].get("features")
        if expected is not None and array_digest(X) != expected:
            raise damaged(path, "the features changed after they were written (rows permuted, "
                                "values edited, or bytes flipped)")
    ids = f["image_id"].asstr()[()] if "image_id" in f else None
    check_finite(X, ids, where=str(path))
    return verified


def _attr_text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def check_finite(features: np.ndarray, ids=None, *, where: str = "the features") -> None:
    """Refuse NaN or infinite values, naming the first rows (and their ids when given).

    The one validation every path that brings features into embedcyto shares: extraction
    refuses to write them, readers refuse to return them.

    Raises:
        DamagedStoreError: some rows hold non-finite values.
    """
    X = np.asarray(features)
    bad: list[int] = []
    for start in range(0, len(X), _BLOCK_ROWS):
        block = X[start : start + _BLOCK_ROWS]
        rows = np.flatnonzero(~np.isfinite(block).all(axis=1)) + start
        bad.extend(rows.tolist())
    if not bad:
        return
    named = [f"{r} ({ids[r]})" if ids is not None else str(r) for r in bad[:5]]
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise DamagedStoreError(
        f"{where} holds NaN or infinite values in {len(bad)} row(s): {', '.join(named)}{more}; "
        f"such features give silently wrong probes; {REBUILD_FIX}"
    )
