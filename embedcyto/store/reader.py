"""Reading a finished store into arrays and metadata (:class:`Features`)."""

from __future__ import annotations

import dataclasses
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from embedcyto.datasets.records import SPLITS
from embedcyto.errors import StoreError
from embedcyto.store.h5format import FORMAT_NAME, FORMAT_VERSION, decode_attr, read_provenance
from embedcyto.store.partial import PartialFolder
from embedcyto.store.paths import SHARDS_SUFFIX, partial_dir, resolve_store_file

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


@contextmanager
def open_store_file(
    path: str | os.PathLike, *, require_complete: bool = True
) -> Iterator[h5py.File]:
    """Open a store for reading after checking it is a complete embedcyto store.

    Raises:
        StoreError: missing (listing the stores that do exist), interrupted (with the command
            that resumes it), not HDF5, not an embedcyto store, or a newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(_missing_message(path))
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise StoreError(
            f"{path} is not a readable HDF5 file ({err}); is it a feature store?"
        ) from err
    with handle as f:
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
        yield f


def _missing_message(path: Path) -> str:
    partial = PartialFolder(partial_dir(path))
    if partial.exists():
        try:
            n_rows = int(partial.read_manifest().get("n_rows", 0))
            done = f"{int(partial.done_mask(n_rows).sum())}/{n_rows} rows done"
        except StoreError:
            done = "progress unknown"
        return (
            f"{path} is incomplete: its extraction was interrupted ({done}); re-run the same "
            f"`embedcyto extract` command to resume it"
        )
    from embedcyto.store.catalog import list_stores

    shards = path.with_name(path.name + SHARDS_SUFFIX)
    if shards.is_dir():
        return (
            f"{path} is not merged yet: its shards are in {shards}; once every shard has "
            f"finished, run `embedcyto store merge --dataset {path.parent.name} --model "
            f"{path.stem} --store {path.parent.parent}`"
        )
    store_dir = path.parent.parent
    found = [f"{s.dataset}/{s.model} ({s.status})" for s in list_stores(store_dir)]
    listing = ", ".join(found) if found else "none"
    return (
        f"no feature store at {path}; stores in {store_dir}: {listing}. Run `embedcyto extract` "
        f"for that dataset and model first, or point --store at the right folder"
    )


def read_store_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The provenance of a complete store (cheap: attributes only)."""
    with open_store_file(path) as f:
        return read_provenance(f.attrs)


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
        log.info("%s: features are compressed or scattered on disk; reading them into memory", path)
    return _readonly(dset[()])


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
    with open_store_file(path) as f:
        provenance = read_provenance(f.attrs)
        for key, wanted in (("dataset", dataset_name), ("model", model)):
            if wanted and provenance.get(key) not in (None, wanted):
                raise StoreError(f"{path} holds {key} {provenance.get(key)!r}, not {wanted!r}")
        n = decode_attr(f.attrs["n_rows"])
        X = _read_features(path, f, mmap)
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
    bad = [k for k, v in rows.items() if v is not None and len(v) != n]
    if len(X) != n or bad:
        raise StoreError(
            f"{path} is malformed: row counts disagree ({bad or 'features'} vs n_rows={n})"
        )
    features = Features(X=X, **rows, **meta, provenance=provenance, path=path)
    return features.subset(split) if split is not None else features
