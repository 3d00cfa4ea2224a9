"""Train/val/test splits: official where the dataset has them, else seeded, stratified, saved.

Models are only comparable on the same test images, so a generated split is made once per
dataset, written to ``split_dir/splits.json`` and reused by every later call. A saved split
that no longer matches the dataset (images added, removed or relabelled) or the requested seed
or ratios is refused with a :class:`SplitError`, never silently regenerated.

Split rule (default ratios 0.7 / 0.1 / 0.2): per class, images are shuffled with
``numpy.random.default_rng(seed)`` and cut so each split gets ``round(n * ratio)`` images of the
class (largest remainders; every count is within one image of its exact share). When records
carry groups (SIPaKMeD: cells of one cluster image), whole groups are assigned instead: largest
groups first (ties in seeded random order), each to the split that brings the per-class counts
closest (least squares) to their targets.

``splits.json``: ``{"version": 1, "adapter", "seed", "ratios", "fingerprint" (sha256 of the
sorted (path, class name) pairs), "assignments": {path: split}, "labels": {path: class}}``.

Two first runs may meet on a fresh split folder (say, two extractions started at once with
different seeds). Creating the file therefore happens under a lock (``.splits.json.lock``, a
POSIX record lock, released when its process dies): the second run finds the first one's file
and checks it like any saved split. The split's identity recorded in stores and LoRA runs is the
hash of the split the records actually carry (``Dataset.split_hash``), never a re-read of a
file another process may have replaced since.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from embedcyto.datasets._common import short_list
from embedcyto.datasets.records import SPLITS, Dataset
from embedcyto.errors import SplitError
from embedcyto.fsio import atomic_write_json

SPLIT_FILE = "splits.json"
SPLIT_LOCK = ".splits.json.lock"
SPLIT_VERSION = 1
DEFAULT_RATIOS = (0.7, 0.1, 0.2)
#: How long a run waits for another process that is creating the same split file.
LOCK_WAIT_S = 120.0


def check_ratios(ratios) -> tuple[float, float, float]:
    """Three non-negative fractions summing to 1 with a non-empty train share."""
    try:
        values = tuple(float(r) for r in ratios)
    except (TypeError, ValueError):
        raise SplitError(f"ratios {ratios!r} must be three numbers (train, val, test)") from None
    if len(values) != 3 or min(values) < 0 or values[0] <= 0 or not math.isclose(sum(values), 1.0,
                                                                               abs_tol=1e-6):
        raise SplitError(f"ratios {ratios!r} must be three non-negative fractions (train, val, "
                         "test) summing to 1, with train > 0, e.g. 0.7,0.1,0.2")
    return values


def _quotas(n: int, ratios: tuple[float, ...]) -> list[int]:
    """Split ``n`` into integer counts by largest remainder (each within 1 of n * ratio)."""
    exact = [n * r for r in ratios]
    counts = [math.floor(e) for e in exact]
    order = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def stratified_split(labels, ratios=DEFAULT_RATIOS, seed: int = 0) -> np.ndarray:
    """Assign each item a split name, stratified by label (pure function of its inputs)."""
    labels = np.asarray(labels)
    ratios = check_ratios(ratios)
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=object)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for split, count in zip(SPLITS, _quotas(len(idx), ratios), strict=True):
            out[idx[start:start + count]] = split
            start += count
    return out


def grouped_split(labels, groups, ratios=DEFAULT_RATIOS, seed: int = 0) -> np.ndarray:
    """Assign splits so that no group straddles two splits, keeping class shares close.

    Args:
        labels: class index per item.
        groups: group key per item (items of one group always share a split).
        ratios: train, val, test fractions.
        seed: shuffles the order of equally large groups.
    """
    labels = np.asarray(labels)
    ratios = check_ratios(ratios)
    keys, group_of = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    classes, class_of = np.unique(labels, return_inverse=True)
    counts = np.zeros((len(keys), len(classes)))
    np.add.at(counts, (group_of, class_of), 1)
    target = np.asarray(ratios)[:, None] * counts.sum(axis=0)[None, :]
    current = np.zeros_like(target)
    order = np.random.default_rng(seed).permutation(len(keys))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    chosen = np.empty(len(keys), dtype=int)
    for g in order:
        gc = counts[g]
        cost = (gc * (2 * (current - target) + gc)).sum(axis=1)
        chosen[g] = int(np.argmin(cost))
        current[chosen[g]] += gc
    return np.asarray(SPLITS, dtype=object)[chosen[group_of]]


def split_fingerprint(dataset: Dataset) -> str:
    """sha256 of the sorted (path, class name) pairs: what a saved split must still match."""
    pairs = sorted((r.path, dataset.classes[r.label]) for r in dataset.records)
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


def _generate(dataset: Dataset, seed: int, ratios) -> dict[str, str]:
    labels = [r.label for r in dataset.records]
    if any(r.group is not None for r in dataset.records):
        groups = [r.group if r.group is not None else f"\0{r.path}" for r in dataset.records]
        splits = grouped_split(labels, groups, ratios, seed)
    else:
        splits = stratified_split(labels, ratios, seed)
    return {r.path: str(s) for r, s in zip(dataset.records, splits, strict=True)}


@contextlib.contextmanager
def split_file_lock(folder: Path, wait_s: float = LOCK_WAIT_S):
    """Hold the split folder's lock: one process at a time creates its ``splits.json``.

    A POSIX record lock (``lockf``): forked decoding workers do not inherit it and the kernel
    drops it when its process dies, so a killed run never blocks the next one.

    Raises:
        SplitError: the folder cannot be written, or another process held the lock longer than
            ``wait_s`` seconds.
    """
    lock_file = Path(folder) / SPLIT_LOCK
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise SplitError(f"cannot create {lock_file} ({err}); make {folder} writable or choose "
                         "another store folder") from None
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except (BlockingIOError, PermissionError):
                if time.monotonic() > deadline:
                    raise SplitError(
                        f"another process has been creating {Path(folder) / SPLIT_FILE} for "
                        f"{wait_s:.0f} s; wait for it to finish, or stop it and run again"
                    ) from None
                time.sleep(0.05)
            except OSError as err:
                raise SplitError(f"cannot lock {lock_file} ({err}); put the store folder on a "
                                 "file system that supports locks") from None
        yield
    finally:
        os.close(fd)


def _content_hash(data: dict) -> str:
    canonical = {k: data[k] for k in ("seed", "ratios", "fingerprint", "assignments")}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def load_split_file(path) -> dict:
    """Read and validate a ``splits.json``; malformed files raise SplitError."""
    path = Path(path)
    fix = f"delete {path} to make a new split"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SplitError(f"cannot read split file {path} ({err}); {fix}") from None
    keys = ("version", "adapter", "seed", "ratios", "fingerprint", "assignments", "labels")
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise SplitError(f"split file {path} lacks some of {', '.join(keys)}; {fix}")
    if data["version"] != SPLIT_VERSION:
        raise SplitError(f"split file {path} has version {data['version']}, this embedcyto reads "
                         f"version {SPLIT_VERSION}; {fix}")
    bad = [p for p, s in data["assignments"].items() if s not in SPLITS]
    if bad:
        raise SplitError(f"split file {path} assigns unknown splits to {short_list(bad, 3)}; {fix}")
    return data


def _explain_change(saved: dict, dataset: Dataset) -> str:
    now = {r.path: dataset.classes[r.label] for r in dataset.records}
    before = saved["labels"]
    added = sorted(set(now) - set(before))
    removed = sorted(set(before) - set(now))
    relabelled = sorted(p for p in set(now) & set(before) if now[p] != before[p])
    parts = [f"{len(v)} {what} (e.g. {short_list(v, 3)})" for what, v in
             (("added", added), ("removed", removed), ("relabelled", relabelled)) if v]
    return "; ".join(parts) or "the class list changed"


def _check_saved(saved: dict, dataset: Dataset, seed: int, ratios, fingerprint: str,
                 path: Path) -> None:
    if saved["adapter"] != dataset.adapter:
        raise SplitError(f"{path} was made for the {saved['adapter']} adapter, not "
                         f"{dataset.adapter}; give this dataset its own split folder, `split_dir=`")
    if saved["seed"] != seed or not np.allclose(saved["ratios"], ratios):
        raise SplitError(
            f"{path} was made with seed {saved['seed']} and ratios {tuple(saved['ratios'])}, but "
            f"seed {seed} and ratios {tuple(ratios)} were requested; pass seed "
            f"{saved['seed']} and those ratios to reuse it, or delete the file to make a new "
            "split (results made with the old split are then no longer comparable)")
    if saved["fingerprint"] != fingerprint:
        raise SplitError(
            f"the dataset under {dataset.root} changed since {path} was made: "
            f"{_explain_change(saved, dataset)}. Restore the images, or delete the file to make "
            "a new split (results made with the old split are then no longer comparable)")


def _saved_or_new(dataset: Dataset, path: Path, seed: int, ratios, fingerprint: str) -> dict:
    """The saved split (checked), or a new one written under the lock when there is none."""
    if not path.exists():
        with split_file_lock(path.parent):
            if not path.exists():
                payload = {
                    "version": SPLIT_VERSION, "adapter": dataset.adapter, "seed": seed,
                    "ratios": list(ratios), "fingerprint": fingerprint,
                    "assignments": _generate(dataset, seed, ratios),
                    "labels": {r.path: dataset.classes[r.label] for r in dataset.records}}
                atomic_write_json(path, payload, indent=1)
                return payload
    saved = load_split_file(path)
    _check_saved(saved, dataset, seed, ratios, fingerprint, path)
    return saved


def assign_splits(dataset: Dataset, *, split_dir=None, seed: int = 0,
                  ratios=DEFAULT_RATIOS) -> Path | None:
    """Give every record a split, in place; return the split file used (None when none).

    Official splits are kept as they are (``seed``, ``ratios`` and ``split_dir`` are unused;
    ``dataset.split_hash`` becomes ``"official"``). Otherwise ``split_dir/splits.json`` is
    reused when present and consistent, or made and written when absent (under a lock, so two
    first runs cannot both write one), and ``dataset.split_hash`` is set to the hash of the
    split used. Without ``split_dir`` the split is generated and not saved (still deterministic
    for a seed) and ``dataset.split_hash`` stays None.

    Raises:
        SplitError: bad ratios, a malformed split file, or one that disagrees with the dataset
            or with the requested seed/ratios.
    """
    if dataset.official_split:
        dataset.split_hash = "official"
        return None
    ratios = check_ratios(ratios)
    fingerprint = split_fingerprint(dataset)
    path = Path(split_dir) / SPLIT_FILE if split_dir is not None else None
    if path is None:
        mapping, digest = _generate(dataset, seed, ratios), None
    else:
        used = _saved_or_new(dataset, path, seed, ratios, fingerprint)
        mapping, digest = used["assignments"], _content_hash(used)
    dataset.records = [replace(r, split=mapping[r.path]) for r in dataset.records]
    dataset.split_hash = digest
    return path


def split_hash(split_file) -> str:
    """sha256 of a split file's content (seed, ratios, fingerprint, assignments), for provenance.

    Hashes the canonical JSON rather than the bytes, so re-indenting the file keeps its hash.
    """
    return _content_hash(load_split_file(split_file))


def dataset_split_hash(dataset: Dataset, split_dir=None) -> str:
    """The identity of the split ``dataset``'s records carry, for store and run provenance.

    ``"official"`` for given splits; the hash :func:`assign_splits` recorded for the split it
    used; for records split by other means, the hash of ``split_dir/splits.json`` provided the
    records agree with it.

    Raises:
        SplitError: no saved split to name, or records that disagree with the saved file.
    """
    if dataset.official_split:
        return "official"
    if dataset.split_hash is not None:
        return dataset.split_hash
    path = Path(split_dir) / SPLIT_FILE if split_dir is not None else None
    if path is None or not path.exists():
        raise SplitError(f"dataset {dataset.name!r} has no saved split file; open it with "
                         "split_dir= so its split is saved once and shared by every model")
    saved = load_split_file(path)
    differ = [r.path for r in dataset.records if saved["assignments"].get(r.path) != r.split]
    if differ:
        raise SplitError(f"the splits of {len(differ)} record(s) of {dataset.name!r} differ from "
                         f"{path} (e.g. {short_list(differ, 3)}); open the dataset again with "
                         "split_dir= so the records carry the saved split")
    return _content_hash(saved)
