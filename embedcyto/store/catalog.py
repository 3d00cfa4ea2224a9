"""What is in a store folder: finished stores, interrupted extractions, and their details."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py

from embedcyto.errors import StoreError
from embedcyto.store import provenance as prov
from embedcyto.store.h5format import (
    decode_attr,
    open_store_file,
    read_provenance,
    read_store_provenance,
    store_rows,
)
from embedcyto.store.integrity import REBUILD_FIX, UNVERIFIED, quick_check
from embedcyto.store.partial import PartialFolder
from embedcyto.store.paths import PARTIAL_SUFFIX, SHARDS_SUFFIX, STORE_SUFFIX, partial_dir

# HDF5 and numpy failures a damaged file can raise while being described.
_READ_ERRORS = (StoreError, KeyError, OSError, RuntimeError, ValueError, TypeError)


@dataclass(frozen=True)
class StoreInfo:
    """One entry of :func:`list_stores`.

    ``state`` is "complete" (a finished store that passed the quick integrity check;
    ``verified`` is False for a store written before checksums existed), "partial" (an
    interrupted extraction: ``rows_done`` of ``rows``), "sharded" (shards of ``--shard`` runs not
    merged yet: ``rows_done`` of ``rows`` written) or "damaged" (``problem`` says why and how to
    get a good store back).
    """

    dataset: str
    model: str
    path: Path
    state: str
    rows: int | None = None
    rows_done: int | None = None
    dim: int | None = None
    dtype: str | None = None
    size_bytes: int = 0
    created_at: str | None = None
    problem: str | None = None
    verified: bool = True

    @property
    def status(self) -> str:
        """A short human description: "complete", "partial 120/400 rows", "damaged: ..."."""
        if self.state == "partial":
            return f"partial {self.rows_done}/{self.rows} rows"
        if self.state == "sharded":
            return f"sharded {self.rows_done}/{self.rows} rows (then: embedcyto store merge)"
        if self.state == "damaged":
            return f"damaged: {self.problem}"
        return "complete" if self.verified else f"complete ({UNVERIFIED})"


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size


def _finished_info(path: Path) -> StoreInfo:
    """One finished store, after the quick integrity check; a failure lists it as damaged."""
    base = {"dataset": path.parent.name, "model": path.name[: -len(STORE_SUFFIX)], "path": path}
    try:
        with open_store_file(path, check=False) as f:
            prov_ = read_provenance(f.attrs)
            verified = quick_check(f, path, prov_, store_rows(f, path))
            shape = f["features"].shape
    except _READ_ERRORS as err:
        problem = str(err) if isinstance(err, StoreError) else (
            f"{path} cannot be read ({type(err).__name__}: {err}); {REBUILD_FIX}")
        return StoreInfo(**base, state="damaged", size_bytes=_size(path), problem=problem)
    return StoreInfo(
        **base,
        state="complete",
        rows=int(shape[0]),
        rows_done=int(shape[0]),
        dim=int(shape[1]),
        dtype=prov_.get("dtype"),
        size_bytes=_size(path),
        created_at=prov_.get("created_at"),
        verified=verified,
    )


def _partial_info(folder: Path) -> StoreInfo:
    path = folder.with_name(folder.name[: -len(PARTIAL_SUFFIX)])
    base = {"dataset": path.parent.name, "model": path.name[: -len(STORE_SUFFIX)], "path": folder}
    partial = PartialFolder(folder)
    try:
        manifest = partial.read_manifest()
        n_rows = int(manifest["n_rows"])
        prov = manifest["provenance"]
    except (StoreError, KeyError, TypeError, ValueError) as err:
        return StoreInfo(**base, state="damaged", size_bytes=_size(folder), problem=str(err))
    return StoreInfo(
        **base,
        state="partial",
        rows=n_rows,
        rows_done=int(partial.done_mask(n_rows).sum()),
        dim=prov.get("embed_dim"),
        dtype=prov.get("dtype"),
        size_bytes=_size(folder),
        created_at=manifest.get("started_at"),
    )


def _sharded_info(folder: Path) -> StoreInfo:
    """Progress of the shard parts in ``<model>.h5.shards/`` (finished and unfinished rows)."""
    path = folder.with_name(folder.name[: -len(SHARDS_SUFFIX)])
    base = {"dataset": path.parent.name, "model": path.name[: -len(STORE_SUFFIX)], "path": folder}
    rows, done, dim, dtype = None, 0, None, None
    for entry in sorted(folder.iterdir()):
        info = None
        if entry.is_file() and entry.name.endswith(STORE_SUFFIX):
            info = _finished_info(entry)
        elif entry.is_dir() and entry.name.endswith(STORE_SUFFIX + PARTIAL_SUFFIX):
            info = _partial_info(entry)
        if info is None or info.state == "damaged":
            continue
        done += info.rows_done or 0
        dim, dtype = info.dim, info.dtype
        rows = rows if rows is not None else _total_rows(entry)
    return StoreInfo(**base, state="sharded", rows=rows, rows_done=done, dim=dim, dtype=dtype,
                     size_bytes=sum(_size(p) for p in folder.iterdir()))


def _total_rows(entry: Path) -> int | None:
    """The whole store's row count, from a shard part's provenance or manifest."""
    try:
        if entry.is_file():
            meta = read_store_provenance(entry).get("shard", {})
        else:
            meta = PartialFolder(entry).read_manifest()["provenance"].get("shard", {})
        return int(meta["rows"])
    except (StoreError, KeyError, TypeError, ValueError):
        return None


def list_stores(store_dir: str | os.PathLike) -> list[StoreInfo]:
    """Every store file and interrupted extraction under ``store_dir/<dataset>/``.

    A finished store being rebuilt with ``--force`` appears twice: complete and partial. A
    partial folder left behind by a publication that was interrupted after its store was
    published (same inputs as that store) is not listed: the next run removes it. A damaged
    store is listed as "damaged" with the fix; it never stops the listing of the others.
    """
    store_dir = Path(store_dir)
    if not store_dir.is_dir():
        return []
    out = []
    for folder in sorted(p for p in store_dir.iterdir() if p.is_dir()):
        for entry in sorted(folder.iterdir()):
            if entry.is_file() and entry.name.endswith(STORE_SUFFIX):
                out.append(_finished_info(entry))
            elif entry.is_dir() and entry.name.endswith(STORE_SUFFIX + PARTIAL_SUFFIX):
                if not is_leftover_partial(entry):
                    out.append(_partial_info(entry))
            elif entry.is_dir() and entry.name.endswith(STORE_SUFFIX + SHARDS_SUFFIX):
                out.append(_sharded_info(entry))
    return out


def is_leftover_partial(folder: Path) -> bool:
    """True for a partial folder whose store was published with the same inputs.

    ``commit`` publishes the store and then removes the partial folder; a process killed in
    between leaves the folder behind. It holds nothing the store does not.
    """
    store = folder.with_name(folder.name[: -len(PARTIAL_SUFFIX)])
    if not store.is_file():
        return False
    try:
        started = PartialFolder(folder).read_manifest().get("provenance", {})
        return not prov.differences(read_store_provenance(store), started)
    except _READ_ERRORS:
        return False


def missing_store_message(path: Path) -> str:
    """Why there is no store at ``path``: interrupted, not merged, or absent (listing others)."""
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
    shards = path.with_name(path.name + SHARDS_SUFFIX)
    if shards.is_dir():
        return (
            f"{path} is not merged yet: its shards are in {shards}; once every shard has "
            f"finished, merge them with `embedcyto store merge` and `dataset={path.parent.name}`, "
            f"`model={path.stem}`, `store_dir={path.parent.parent}`"
        )
    store_dir = path.parent.parent
    found = [f"{s.dataset}/{s.model} ({s.status})" for s in list_stores(store_dir)]
    listing = ", ".join(found) if found else "none"
    return (
        f"no feature store at {path}; stores in {store_dir}: {listing}. Run `embedcyto extract` "
        "for that dataset and model first, or give the right store folder (`store_dir=`)"
    )


def store_info(path: str | os.PathLike) -> dict[str, Any]:
    """Everything about one store: state, shapes, sizes, datasets inside and provenance.

    For a store whose extraction was interrupted, describes the partial folder instead.

    Raises:
        StoreError: neither the store nor a partial extraction of it exists, or it is unreadable
            or damaged (quick integrity check).
    """
    path = Path(path)
    if not path.is_file() and PartialFolder(partial_dir(path)).exists():
        info = _partial_info(partial_dir(path))
        manifest = PartialFolder(partial_dir(path)).read_manifest()
        return {**_summary(info), "provenance": manifest.get("provenance", {})}
    if not path.is_file():
        raise StoreError(missing_store_message(path))
    with open_store_file(path) as f:
        attrs = {k: decode_attr(v) for k, v in f.attrs.items()}
        arrays: dict[str, str] = {}

        def visit(name: str, node) -> None:
            if isinstance(node, h5py.Dataset):
                kind = "utf-8 string" if h5py.check_string_dtype(node.dtype) else str(node.dtype)
                arrays[name] = f"{kind} {list(node.shape)}"

        f.visititems(visit)
        provenance = read_provenance(f.attrs)
    summary = _summary(_finished_info(path))
    fmt = {k: attrs[k] for k in ("format", "format_version", "complete", "n_rows") if k in attrs}
    return {**summary, **fmt, "arrays": arrays, "provenance": provenance}


def _summary(info: StoreInfo) -> dict[str, Any]:
    return {
        "path": str(info.path),
        "dataset": info.dataset,
        "model": info.model,
        "state": info.state,
        "status": info.status,
        "rows": info.rows,
        "rows_done": info.rows_done,
        "embed_dim": info.dim,
        "dtype": info.dtype,
        "size_bytes": info.size_bytes,
        "created_at": info.created_at,
    }
