"""Everything the probe grid checks before it computes anything.

A probe run can last hours; a request it cannot honour must fail (or be trimmed, with a warning)
in the first second, not after the linear probes of the first dataset. These functions look at
the stores only — their rows, splits, labels and finiteness — never at a probe.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedcyto.errors import DamagedStoreError, ProbeError
from embedcyto.probes import registry
from embedcyto.probes.evaluate import check_finite

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreCheck:
    """What the grid needs to know about one dataset's stores, read before any work.

    ``stores`` maps model -> (path, identity at inspection); ``train_counts`` is the number of
    training rows of each class (the same in every store of the dataset, which is checked).
    ``damaged`` lists the stores left out because a read found them damaged.
    """

    dataset: str
    stores: dict[str, tuple[Path, str]]
    classes: tuple[str, ...]
    train_counts: tuple[int, ...]
    damaged: tuple[SkippedStore, ...] = ()


@dataclass(frozen=True)
class SkippedStore:
    """A store the grid left out, and why (the reason names the fix, ``extract --force``)."""

    dataset: str
    model: str
    path: Path
    problem: str


def store_identity(provenance: Mapping[str, Any]) -> str:
    """sha256 of a store's whole provenance: any re-extraction gives a new identity."""
    return hashlib.sha256(json.dumps(provenance, sort_keys=True, default=str).encode()).hexdigest()


def row_signature(features) -> str:
    """Hash of the sorted (id, split, label) triples: equal for stores of the same rows."""
    ids = np.asarray(features.ids).astype(str)
    order = np.argsort(ids, kind="stable")
    digest = hashlib.sha256()
    for part in (ids[order], np.asarray(features.splits).astype(str)[order],
                 np.asarray(features.labels)[order].astype(str)):
        digest.update("\n".join(part.tolist()).encode())
    return digest.hexdigest()


def _check_validation(path: Path, features, methods: Sequence[str]) -> None:
    needing = [m for m in methods if registry.get_method(m).needs_validation]
    if needing and not np.any(np.asarray(features.splits) == "val"):
        rest = ",".join(m for m in methods if m not in needing) or "simpleshot"
        raise ProbeError(
            f"{path} has no validation rows, which {', '.join(needing)} need to choose their "
            "hyper-parameter: re-split the dataset with a validation share and extract again, "
            f"or probe with `methods={rest}`")


def inspect_stores(store_dir: Path, dataset: str, models: Sequence[str],
                   methods: Sequence[str]) -> StoreCheck:
    """Check every store of a dataset before any probe runs.

    A store that a full read finds damaged (flipped bytes, permuted rows: damage the quick
    check of ``store ls`` cannot see) is left out and listed in ``StoreCheck.damaged``, so one
    bad file never stops the probes of the others.

    Raises:
        ProbeError: missing/incomplete stores (via the store reader), stores of one dataset whose
            rows or splits differ between models, a missing validation split a method needs,
            non-finite features (the rows named).
    """
    from embedcyto.store import load_features, store_path

    out, signatures, counts, classes, damaged = {}, {}, (), (), []
    for model in models:
        path = store_path(store_dir, dataset, model)
        try:
            feats = load_features(path, dataset, model, mmap=True)
        except DamagedStoreError as err:
            log.warning("skipping a damaged store: %s", err)
            damaged.append(SkippedStore(dataset, model, path, str(err)))
            continue
        out[model] = (path, store_identity(feats.provenance))
        signatures[model] = row_signature(feats)
        _check_validation(path, feats, methods)
        check_finite(feats.X, feats.ids, str(path))
        train = np.asarray(feats.labels)[np.asarray(feats.splits) == "train"]
        classes = tuple(feats.classes)
        counts = tuple(int(n) for n in np.bincount(train, minlength=len(classes)))
    if len(set(signatures.values())) > 1:
        groups: dict[str, list[str]] = {}
        for model, sig in signatures.items():
            groups.setdefault(sig, []).append(model)
        listing = " vs ".join("[" + ", ".join(g) + "]" for g in groups.values())
        raise ProbeError(
            f"stores of dataset {dataset!r} hold different images or splits ({listing}), so "
            "models would not be compared on the same rows: extract them all from the same "
            "dataset root and split file")
    return StoreCheck(dataset, out, classes, counts, tuple(damaged))


def _shortest(check: StoreCheck) -> tuple[str, int]:
    i = int(np.argmin(check.train_counts))
    return check.classes[i], check.train_counts[i]


def usable_shots(checks: Sequence[StoreCheck], shots: Sequence[int], methods: Sequence[str],
                 explicit: bool) -> dict[str, tuple[int, ...]]:
    """The shots each dataset can support; the others are skipped with one warning per dataset.

    A shot value needs every class to have at least that many training images. When a value
    that was asked for explicitly fits no dataset at all, that is an error rather than a run
    that silently leaves it out; the default grid is trimmed with a warning only.

    Raises:
        ProbeError: an explicitly requested shot value no dataset can support.
    """
    if not any(registry.get_method(m).episodic for m in methods):
        return {c.dataset: tuple(shots) for c in checks}
    checks = [c for c in checks if c.stores]
    smallest = {c.dataset: _shortest(c) if c.train_counts else ("?", 0) for c in checks}
    out = {d: tuple(k for k in shots if k <= n) for d, (_, n) in smallest.items()}
    unusable = [k for k in shots if all(k not in v for v in out.values())]
    if unusable and (explicit or not any(out.values())):
        listing = "; ".join(f"{d}: class {c!r} has {n} training images"
                            for d, (c, n) in smallest.items())
        raise ProbeError(
            f"shots={','.join(map(str, unusable))} fits no dataset ({listing}); every class "
            f"needs at least `shots` training images: lower shots to at most "
            f"{max(n for _, n in smallest.values())}")
    for dataset, (name, count) in smallest.items():
        dropped = [k for k in shots if k > count]
        if dropped:
            log.warning("%s: skipping shots %s: class %r has only %d training images", dataset,
                        ",".join(map(str, dropped)), name, count)
    return out
