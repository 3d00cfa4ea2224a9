"""Ways a store file gets damaged on disk, and stores as older embedcyto versions wrote them.

Shared by the integrity tests: each function edits a finished store in place the way a disk
error, a careless script or a hand edit would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np


def _chunk_offset(path: Path) -> tuple[int, int]:
    """(byte offset, size) of the first chunk of ``features`` in the file."""
    with h5py.File(path, "r") as f:
        info = f["features"].id.get_chunk_info(0)
        return info.byte_offset, info.size


def flip_feature_byte(path: Path) -> None:
    """Flip one byte inside the features' first chunk (a disk or memory error)."""
    offset, size = _chunk_offset(path)
    with open(path, "r+b") as handle:
        handle.seek(offset + size // 2)
        byte = handle.read(1)
        handle.seek(offset + size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))


def truncate(path: Path) -> None:
    """Cut the file in half (a copy interrupted, a full disk on another tool's write)."""
    os.truncate(path, path.stat().st_size // 2)


def _rewrite_features(path: Path, change) -> None:
    """Replace ``features`` with ``change(X)``, keeping every attribute (a careless script)."""
    with h5py.File(path, "r+") as f:
        X = f["features"][()]
        del f["features"]
        new = change(X)
        f.create_dataset("features", data=new, chunks=(len(new), new.shape[1]))


def permute_rows(path: Path) -> None:
    """Reverse the order of the feature rows (ids and labels stay)."""
    _rewrite_features(path, lambda X: X[::-1].copy())


def narrow(path: Path) -> None:
    """Drop the last feature column."""
    _rewrite_features(path, lambda X: X[:, :-1].copy())


def drop_dataset(path: Path, name: str = "label") -> None:
    """Delete one dataset."""
    with h5py.File(path, "r+") as f:
        del f[name]


def edit_provenance(path: Path) -> None:
    """Change a provenance attribute after the fact (claims other weights)."""
    with h5py.File(path, "r+") as f:
        f.attrs["weights_sha256"] = "00" * 32


def put_value(path: Path, row: int, value: float) -> None:
    """Write ``value`` into one feature of one row, checksums and digest recomputed.

    The file stays internally consistent (as if written that way): only the finite-value check
    can catch it.
    """
    from embedcyto.store.integrity import INTEGRITY_ATTR, array_digest

    with h5py.File(path, "r+") as f:
        f["features"][row, 0] = value
        record = json.loads(f.attrs[INTEGRITY_ATTR])
        record["datasets"]["features"] = array_digest(f["features"][()])
        f.attrs[INTEGRITY_ATTR] = json.dumps(record, sort_keys=True)


DAMAGES = {
    "flip": flip_feature_byte,
    "truncate": truncate,
    "permute": permute_rows,
    "narrow": narrow,
    "drop-dataset": drop_dataset,
    "edit-provenance": edit_provenance,
}


def make_legacy(path: Path) -> None:
    """Rewrite a store as embedcyto wrote it before checksums: no filters, no integrity record.

    Features are allocated early and back to back (what the older writer did), so the store can
    also be memory-mapped.
    """
    tmp = path.with_name(path.name + ".legacy")
    with h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
        for key, value in src.attrs.items():
            if key != "integrity":
                dst.attrs[key] = value

        def copy(name, node):
            if isinstance(node, h5py.Group):
                dst.require_group(name)
            elif name == "features":
                dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                X = node[()]
                dset = dst.create_dataset(name, shape=X.shape, dtype=X.dtype,
                                          chunks=(min(len(X), 1024), X.shape[1]), dcpl=dcpl,
                                          fill_time="never")
                dset[()] = X
            else:
                dst.create_dataset(name, data=node[()], dtype=node.dtype)

        src.visititems(copy)
    os.replace(tmp, path)


def feature_values(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["features"][()]
