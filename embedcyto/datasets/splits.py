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
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from embedcyto.datasets._common import short_list
from embedcyto.datasets.records import SPLITS, Dataset
from embedcyto.errors import SplitError

SPLIT_FILE = "splits.json"
SPLIT_VERSION = 1
DEFAULT_RATIOS = (0.7, 0.1, 0.2)


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


def _write_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".splits-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def assign_splits(dataset: Dataset, *, split_dir=None, seed: int = 0,
                  ratios=DEFAULT_RATIOS) -> Path | None:
    """Give every record a split, in place; return the split file used (None when none).

    Official splits are kept as they are (``seed``, ``ratios`` and ``split_dir`` are unused).
    Otherwise ``split_dir/splits.json`` is reused when present and consistent, or made and
    written when absent. Without ``split_dir`` the split is generated and not saved (still
    deterministic for a seed).

    Raises:
        SplitError: bad ratios, a malformed split file, or one that disagrees with the dataset
            or with the requested seed/ratios.
    """
    if dataset.official_split:
        return None
    ratios = check_ratios(ratios)
    fingerprint = split_fingerprint(dataset)
    path = Path(split_dir) / SPLIT_FILE if split_dir is not None else None
    if path is not None and path.exists():
        saved = load_split_file(path)
        _check_saved(saved, dataset, seed, ratios, fingerprint, path)
        mapping = saved["assignments"]
    else:
        mapping = _generate(dataset, seed, ratios)
        if path is not None:
            _write_atomic(path, {
                "version": SPLIT_VERSION, "adapter": dataset.adapter, "seed": seed,
                "ratios": list(ratios), "fingerprint": fingerprint, "assignments": mapping,
                "labels": {r.path: dataset.classes[r.label] for r in dataset.records}})
    dataset.records = [replace(r, split=mapping[r.path]) for r in dataset.records]
    return path


def split_hash(split_file) -> str:
    """sha256 of a split file's content (seed, ratios, fingerprint, assignments), for provenance.

    Hashes the canonical JSON rather than the bytes, so re-indenting the file keeps its hash.
    """
    data = load_split_file(split_file)
    canonical = {k: data[k] for k in ("seed", "ratios", "fingerprint", "assignments")}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
