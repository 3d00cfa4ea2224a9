"""One store written by several processes: each shard writes its own part, then they are merged.

A shard is ``i/N``: process ``i`` of ``N`` computes one contiguous block of the dataset's rows
and writes it as an ordinary store file of its own rows, through the same writer as a
single-process run. So each shard has its own lock, its own crash-safe batch folder (a killed
shard resumes where it stopped) and its own identity check. Parts live beside the final store:

    <store>/<dataset>/<model>.h5.shards/shard-<i>-of-<N>.h5            a finished shard
    <store>/<dataset>/<model>.h5.shards/shard-<i>-of-<N>.h5.partial/   an unfinished one
    <store>/<dataset>/<model>.h5.shards/shard-<i>-of-<N>.h5.lock       its writers' lock

Rows are split into contiguous blocks whose boundaries fall on multiples of the batch size, so
every forward pass sees exactly the images it would see in a single-process run with that batch
size: the merged features equal the single-process ones bit for bit wherever the backend is
deterministic (some kernels give a row slightly different values in a batch of another size).
:func:`embedcyto.store.merge.merge_shards` joins the parts into ``<model>.h5``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedcyto.datasets.records import Dataset
from embedcyto.errors import StaleStoreError, StoreError
from embedcyto.store import provenance as prov
from embedcyto.store.h5format import DTYPES, read_store_provenance
from embedcyto.store.partial import PartialFolder
from embedcyto.store.paths import PARTIAL_SUFFIX, SHARDS_SUFFIX, STORE_SUFFIX
from embedcyto.store.reader import verify_store
from embedcyto.store.writer import FeatureWriter, complete_provenance

SCHEME = "contiguous-batch-blocks"
SHARD_KEY = "shard"
_PART = re.compile(r"^shard-(\d+)-of-(\d+)\.h5$")
_PARTIAL = re.compile(r"^shard-(\d+)-of-(\d+)\.h5\.partial$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based), as in ``--shard 1/4`` or a torchrun rank."""

    index: int
    count: int

    def __post_init__(self):
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise StoreError(f"a shard count must be a positive integer, got {self.count!r}")
        if isinstance(self.index, bool) or not isinstance(self.index, int) or not (
            0 <= self.index < self.count
        ):
            raise StoreError(
                f"shard index must be in 0..{self.count - 1} for {self.count} shards, got "
                f"{self.index!r} (shards are numbered from 0: `shard=0/{self.count}` is the first)"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"1/4"`` → ``Shard(1, 4)``; a clear error for anything else."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if match is None:
            raise StoreError(f"a shard is INDEX/COUNT such as 0/4 (0-based: `shard=0/4` is the "
                             f"first of four), got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_bounds(n_rows: int, count: int, block: int = 1) -> list[tuple[int, int]]:
    """``[start, stop)`` of every shard: contiguous, in order, cut on multiples of ``block``.

    Blocks of ``block`` rows (the last one possibly shorter) are dealt out as evenly as
    possible; with more shards than blocks, the extra shards get no rows.
    """
    if n_rows < 0 or count < 1 or block < 1:
        raise StoreError(f"cannot split {n_rows} rows into {count} shards of {block}-row blocks")
    n_blocks = -(-n_rows // block)
    cuts = [min(n_rows, (n_blocks * i // count) * block) for i in range(count + 1)]
    return list(itertools.pairwise(cuts))


def shards_dir(path: str | os.PathLike) -> Path:
    """The folder holding the shard parts of the store ``path``."""
    path = Path(path)
    return path.with_name(path.name + SHARDS_SUFFIX)


def part_path(path: str | os.PathLike, shard: Shard) -> Path:
    """The finished part of ``shard`` for the store ``path``."""
    return shards_dir(path) / f"shard-{shard.index}-of-{shard.count}{STORE_SUFFIX}"


def scan_parts(path: str | os.PathLike) -> dict[int, dict[int, str]]:
    """Shards found for a store: ``{count: {index: "finished" | "unfinished"}}``."""
    folder = shards_dir(path)
    found: dict[int, dict[int, str]] = {}
    if not folder.is_dir():
        return found
    for entry in folder.iterdir():
        for pattern, state in ((_PART, "finished"), (_PARTIAL, "unfinished")):
            match = pattern.match(entry.name)
            if match is None:
                continue
            index, count = int(match.group(1)), int(match.group(2))
            states = found.setdefault(count, {})
            if states.get(index) != "finished":
                states[index] = state
    return found


class NothingToDo:
    """Writer stand-in for a shard with no work: the final store is current, or no rows."""

    def __init__(self, path: Path, dataset: Dataset, *, cache_hit: bool):
        self.path = path
        self.dataset = dataset
        self.n_rows = len(dataset.records)
        self.is_cache_hit = cache_hit
        self.resumed_rows = 0

    def pending_rows(self) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)

    def commit(self) -> Path:
        return self.path

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> NothingToDo:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def final_is_current(path: Path, expected: dict[str, Any], *, force: bool) -> bool:
    """True when the merged store exists with ``expected``'s identity and passes the full
    integrity check (a cache hit).

    Raises:
        StaleStoreError: it exists with another identity and ``force`` is off.
        StoreError: it is damaged (rebuild it with ``force``).
    """
    if force or not path.exists():
        return False
    try:
        old = read_store_provenance(path)
    except StoreError as err:
        raise StoreError(f"{err}; pass `force=True` to replace it") from err
    diffs = prov.differences(old, expected)
    if not diffs:
        verify_store(path)
        return True
    raise StaleStoreError(
        f"{path} was made from other inputs than requested ({prov.describe_differences(diffs)}); "
        "pass `force=True` to every shard to rebuild it (the old store stays until the merge), "
        "or write to another store folder (`store_dir=`)"
    )


def open_shard_writer(path: str | os.PathLike, *, dataset: Dataset, provenance: dict[str, Any],
                      embed_dim: int, shard: Shard, block: int, dtype: str = "float32",
                      force: bool = False, compression: str | None = None):
    """A writer for one shard's rows of the store ``path`` (its ``dataset`` is that block).

    Returns a :class:`NothingToDo` when the merged store is already current (``is_cache_hit``)
    or the shard has no rows; otherwise a :class:`FeatureWriter` on the shard's part file,
    which resumes an interrupted run of the same shard. The part's provenance is the store's
    plus a ``shard`` entry (index, count, rows, block, the whole dataset's ``rows_sha256``).

    Args:
        block: rows per forward pass (the batch size): shard boundaries fall on its multiples.
    """
    path = Path(path)
    if dtype not in DTYPES:
        raise StoreError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    expected = complete_provenance(path, dataset, provenance, embed_dim=embed_dim, dtype=dtype)
    if final_is_current(path, expected, force=force):
        return NothingToDo(path, dataset, cache_hit=True)
    n_rows = len(dataset.records)
    start, stop = shard_bounds(n_rows, shard.count, block)[shard.index]
    part = dataclasses.replace(dataset, records=list(dataset.records[start:stop]))
    if start == stop:
        return NothingToDo(part_path(path, shard), part, cache_hit=False)
    meta = {"index": shard.index, "count": shard.count, "start": start, "stop": stop,
            "rows": n_rows, "block": int(block), "scheme": SCHEME,
            "rows_sha256": expected["rows_sha256"]}
    part_prov = dict(expected, **{SHARD_KEY: meta})
    return FeatureWriter(part_path(path, shard), dataset=part, provenance=part_prov,
                         embed_dim=embed_dim, dtype=dtype, force=force, compression=compression)


def unfinished_rows(path: Path, shard: Shard) -> tuple[int, int] | None:
    """(rows done, rows) of an unfinished shard, or None when it cannot be read."""
    partial = PartialFolder(part_path(path, shard).with_name(
        part_path(path, shard).name + PARTIAL_SUFFIX))
    try:
        meta = partial.read_manifest()
        n_rows = int(meta["n_rows"])
    except (StoreError, KeyError, TypeError, ValueError):
        return None
    return int(partial.done_mask(n_rows).sum()), n_rows
