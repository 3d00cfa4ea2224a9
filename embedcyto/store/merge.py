"""Joining finished shards into one store, identical to a single-process store.

The merged file holds the same rows in the same order, the same features and the same identity
provenance as a single-process extraction; only informational keys differ (``sharding`` says how
it was run). Merging refuses, naming the shard, when one is missing, unfinished, being written,
or made from other inputs than the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedcyto.errors import StaleStoreError, StoreError
from embedcyto.store import provenance as prov
from embedcyto.store.h5format import RowTable, StoreLabels, read_store_provenance, write_store_file
from embedcyto.store.lock import StoreLock
from embedcyto.store.paths import lock_path
from embedcyto.store.reader import load_features
from embedcyto.store.shards import (
    SHARD_KEY,
    Shard,
    part_path,
    scan_parts,
    shard_bounds,
    shards_dir,
    unfinished_rows,
)
from embedcyto.store.writer import utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge_shards` did: ``merged`` is False when the store was already whole."""

    path: Path
    rows: int
    shards: int
    merged: bool


def _choose_count(path: Path, found: dict[int, dict[int, str]], count: int | None) -> int | None:
    """The shard count to merge; None when there is nothing to merge and the store exists."""
    if count is not None:
        if count not in found:
            raise StoreError(f"no shard of {count} found in {shards_dir(path)}; run "
                             f"`embedcyto extract` with `shard=0/{count}` (and the others) first")
        return count
    if not found:
        if path.exists():
            return None
        raise StoreError(f"no shards of {path} to merge in {shards_dir(path)}: run `embedcyto "
                         "extract` with `shard=I/N` for every I first (or extract without "
                         "`shard=`)")
    if len(found) > 1:
        counts = ", ".join(str(c) for c in sorted(found))
        raise StoreError(f"{shards_dir(path)} holds shards of different runs ({counts} shards); "
                         "pass `count=N` to merge one of them, or delete the other run's files")
    return next(iter(found))


def _shard_of(p: dict[str, Any], shard: Shard, path: Path) -> dict[str, Any]:
    meta = p.get(SHARD_KEY)
    keys = ("index", "count", "start", "stop", "rows", "block", "rows_sha256")
    if not isinstance(meta, dict) or any(k not in meta for k in keys):
        raise StoreError(f"{part_path(path, shard)} has no valid shard description; delete it "
                         f"and run shard {shard} again")
    return meta


def _without_shard(p: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in p.items() if k not in (SHARD_KEY, "rows_sha256")}


def _run_hint(shard: Shard) -> str:
    return f"run `embedcyto extract` with `shard={shard}` and the same options"


def _check_parts(path: Path, count: int, states: dict[int, str]) -> list[tuple[Shard, dict]]:
    """(shard, provenance) of every non-empty shard; refuses listing every problem found."""
    finished = {i: read_store_provenance(part_path(path, Shard(i, count)))
                for i, state in sorted(states.items()) if state == "finished"}
    if not finished:
        raise StoreError(f"cannot merge {path}: none of its {count} shards has finished "
                         f"({_describe_unfinished(path, count, states)})")
    ref_index = min(finished)
    ref = _shard_of(finished[ref_index], Shard(ref_index, count), path)
    bounds = shard_bounds(int(ref["rows"]), count, int(ref["block"]))
    problems, parts = [], []
    for i, (start, stop) in enumerate(bounds):
        shard = Shard(i, count)
        if start == stop:
            continue
        if i not in finished:
            problems.append(_absent(path, shard, states.get(i)))
            continue
        meta = _shard_of(finished[i], shard, path)
        same_rows = [meta[k] for k in ("rows", "block", "rows_sha256", "start", "stop")] == [
            ref["rows"], ref["block"], ref["rows_sha256"], start, stop]
        if not same_rows:
            problems.append(
                f"shard {shard} covers rows {meta['start']}..{meta['stop']} of {meta['rows']} "
                f"(batch size {meta['block']}) but shard {ref_index}/{count} implies "
                f"{start}..{stop} of {ref['rows']} (batch size {ref['block']}): {_run_hint(shard)}"
                f", `batch_size={ref['block']}` and the same dataset")
            continue
        diffs = prov.differences(_without_shard(finished[ref_index]), _without_shard(finished[i]))
        if diffs:
            problems.append(
                f"shard {shard} was made from other inputs than shard {ref_index}/{count} "
                f"({prov.describe_differences(diffs)}): {_run_hint(shard)} and `force=True`")
            continue
        parts.append((shard, finished[i]))
    if problems:
        raise StoreError(f"cannot merge {path}: " + "; ".join(problems))
    return parts


def _absent(path: Path, shard: Shard, state: str | None) -> str:
    if state == "unfinished":
        done = unfinished_rows(path, shard)
        rows = f" ({done[0]}/{done[1]} rows done)" if done else ""
        return (f"shard {shard} is unfinished{rows}: run `embedcyto extract` with "
                f"`shard={shard}` again, it resumes where it stopped")
    return (f"shard {shard} is missing: run `embedcyto extract` with `shard={shard}` (every "
            "shard must write to the same store folder)")


def _describe_unfinished(path: Path, count: int, states: dict[int, str]) -> str:
    return "; ".join(_absent(path, Shard(i, count), states.get(i)) for i in range(count))


def _merged_provenance(parts: list[tuple[Shard, dict]]) -> dict[str, Any]:
    """The first part's provenance as a single-process run would have written it."""
    first = parts[0][1]
    meta = first[SHARD_KEY]
    out = {k: v for k, v in first.items() if k != SHARD_KEY}
    out["rows_sha256"] = meta["rows_sha256"]
    resumed = sum(int(p.get("rows_resumed", 0)) for _, p in parts)
    out.pop("rows_resumed", None)
    if resumed:
        out["rows_resumed"] = resumed
    out["sharding"] = {
        "count": int(meta["count"]), "scheme": meta.get("scheme"), "block": int(meta["block"]),
        "devices": [p.get("device") for _, p in parts],
    }
    return out


def _read_parts(path: Path, parts: list[tuple[Shard, dict]]):
    """(label spaces, row table, features) of the parts, in shard order (each part verified)."""
    feats = [load_features(part_path(path, shard)) for shard, _ in parts]
    first = feats[0]
    for shard_feats, (shard, _) in zip(feats[1:], parts[1:]):
        if shard_feats.classes != first.classes or shard_feats.level_names != first.level_names:
            raise StoreError(f"shard {shard} has other class names than shard {parts[0][0]}; "
                             "run it again (`embedcyto extract` with `force=True`)")
    levels = None if first.levels is None else np.concatenate([f.levels for f in feats])
    table = RowTable(
        ids=np.concatenate([f.ids for f in feats]).astype(str),
        labels=np.concatenate([f.labels for f in feats]).astype(np.int64),
        splits=np.concatenate([f.splits for f in feats]).astype(str),
        groups=np.concatenate([f.groups for f in feats]).astype(str),
        levels=levels,
    )
    labels = StoreLabels.of(first)
    return labels, table, np.concatenate([np.asarray(f.X) for f in feats])


def merge_shards(path: str | os.PathLike, *, count: int | None = None,
                 force: bool = False) -> MergeResult:
    """Join the finished shards of the store ``path`` into ``path``, then delete the parts.

    Args:
        path: the final store (``store_path(store_dir, dataset, model)``).
        count: the number of shards, when parts of several runs are present.
        force: replace an existing store made from other inputs.

    Raises:
        StoreError: no shards, a shard missing, unfinished or disagreeing with the others
            (each problem named), or parts of several runs without ``count``.
        StoreLockedError: the store or one of its shards is being written.
        StaleStoreError: the store exists with other inputs and ``force`` is off.
    """
    path = Path(path)
    _choose_count(path, scan_parts(path), count)  # refuse before touching the folder
    with contextlib.ExitStack() as locks:
        locks.enter_context(StoreLock(lock_path(path), path))
        found = scan_parts(path)
        chosen = _choose_count(path, found, count)
        if chosen is None:
            rows = len(load_features(path, mmap=True))
            return MergeResult(path, rows, 0, merged=False)
        for index in sorted(found[chosen]):
            part = part_path(path, Shard(index, chosen))
            locks.enter_context(StoreLock(lock_path(part), part))
        parts = _check_parts(path, chosen, found[chosen])
        final = _merged_provenance(parts)
        if path.exists() and not force:
            diffs = prov.differences(read_store_provenance(path), final)
            if diffs:
                raise StaleStoreError(
                    f"{path} exists and was made from other inputs than its shards "
                    f"({prov.describe_differences(diffs)}); pass `force=True` to replace it")
            shutil.rmtree(shards_dir(path))
            return MergeResult(path, len(load_features(path, mmap=True)), chosen, merged=False)
        labels, table, features = _read_parts(path, parts)
        if table.n_rows != int(parts[0][1][SHARD_KEY]["rows"]):
            raise StoreError(f"the shards of {path} hold {table.n_rows} rows, expected "
                             f"{parts[0][1][SHARD_KEY]['rows']}; run them again (`embedcyto extract` "
                             "with `force=True`)")
        final["created_at"] = utc_now()
        write_store_file(path, table, labels, features, final)
        shutil.rmtree(shards_dir(path))
        log.info("merged %d shards into %s (%d rows)", chosen, path, table.n_rows)
        return MergeResult(path, table.n_rows, chosen, merged=True)
