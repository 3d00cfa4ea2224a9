"""Few-shot episodes: support sets shared by every model, and fast batched evaluation.

Support sets are a pure function of (training ids, labels, shots, seed, episode), drawn by
:mod:`embedcyto.datasets.sampling` (re-exported here): every model's store, whatever order its
rows were written in, gets the same images for the same episode, the LoRA stage draws the same
images through the same module, and model comparisons are paired.

Queries are the whole test split; supports come from the training split, so the two never
overlap (checked when test ids are given). :func:`run_episodes` evaluates many episodes at once:
features are transformed once, prototypes of a batch of episodes are built by one gather, and
all distances of the batch come from one matrix product.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from embedcyto.datasets.sampling import support_batch, support_ids, support_indices  # noqa: F401
from embedcyto.errors import ProbeError
from embedcyto.metrics import batch_confusion, coarse_proba, metrics_from_confusion
from embedcyto.probes._base import l2_normalise
from embedcyto.probes._sk import softmax

METHODS = ("simpleshot", "protonet")
DEFAULT_TEMPERATURE = {"simpleshot": 0.1, "protonet": 1.0}


def _transform(method: str, X_train, X_test) -> tuple[np.ndarray, np.ndarray]:
    """Features as the method compares them, computed once for all episodes."""
    if method == "simpleshot":
        mean = X_train.mean(axis=0)
        return l2_normalise(X_train - mean), l2_normalise(X_test - mean)
    return X_train, X_test


def _batch_size(n_test: int, n_classes: int, shots: int, dim: int, budget: int) -> int:
    per_episode = max(n_test * n_classes, n_classes * shots * dim)
    return max(1, budget // per_episode)


def _level_setup(levels_test, level_maps, level_names):
    if levels_test is None:
        return []
    lv = np.asarray(levels_test, dtype=np.int64)
    out = []
    for i, name in enumerate(level_names):
        m = np.asarray(level_maps[name])
        rows = np.flatnonzero(lv[:, i] >= 0)
        k = int(max(m.max(initial=-1), lv[:, i].max(initial=-1))) + 1
        out.append((name, m, k, rows, lv[rows, i]))
    return out


def run_episodes(X_train, y_train, ids_train, X_test, y_test, shots: int, n_episodes: int,
                 seed: int, method: str = "simpleshot", *, n_classes: int | None = None,
                 class_names=None, ids_test=None, levels_test=None,
                 level_maps: Mapping[str, Sequence[int]] | None = None,
                 level_names: Sequence[str] = (), temperature: float | None = None,
                 budget: int = 1 << 23) -> dict:
    """Evaluate ``n_episodes`` few-shot episodes (episodes 0..n-1) with queries = the test split.

    Args:
        X_train, y_train, ids_train: the training split (the pool supports are drawn from).
        X_test, y_test: the queries.
        shots, n_episodes, seed: the episodes (see :func:`support_indices`).
        method: "simpleshot" (centred on the training split's mean, L2-normalised) or "protonet".
        ids_test: when given, supports and queries are checked to share no image.
        levels_test, level_maps, level_names: HiCervix per-level evaluation of every episode
            (levels summed up the tree from the softmax over negative distances).
        temperature: softmax temperature (default per method, :data:`DEFAULT_TEMPERATURE`).
        budget: floats per batch of episodes (memory knob; results do not depend on it).

    Returns:
        ``{"accuracy", "balanced_accuracy", "macro_f1": arrays (n_episodes,)}`` and, with levels,
        ``"levels": {name: {metric: array}}`` and ``"level_average"`` (mean of level accuracies).
    """
    if method not in METHODS:
        raise ProbeError(f"unknown episode method {method!r}; choose one of {', '.join(METHODS)}")
    if int(n_episodes) < 1:
        raise ProbeError(f"n_episodes must be at least 1, got {n_episodes}")
    y_test = np.asarray(y_test, dtype=np.int64)
    k = int(n_classes) if n_classes is not None else int(np.max(y_train)) + 1
    if ids_test is not None and np.intersect1d(np.asarray(ids_train).astype(str),
                                               np.asarray(ids_test).astype(str)).size:
        raise ProbeError("training and test splits share images: supports would leak into queries")
    support = support_batch(ids_train, y_train, shots, seed, np.arange(int(n_episodes)),
                            n_classes=k, class_names=class_names)
    T, Q = _transform(method, np.asarray(X_train), np.asarray(X_test))
    q_sq = (Q * Q).sum(axis=1)[:, None]
    temp = DEFAULT_TEMPERATURE[method] if temperature is None else float(temperature)
    levels = _level_setup(levels_test, level_maps, level_names)
    parts: list[dict] = []
    step = _batch_size(Q.shape[0], k, int(shots), T.shape[1], budget)
    for start in range(0, support.shape[0], step):
        idx = support[start:start + step]
        protos = T[idx].mean(axis=2)  # (E, C, d)
        flat = protos.reshape(-1, protos.shape[-1])
        d2 = q_sq - 2.0 * (Q @ flat.T) + (flat * flat).sum(axis=1)[None, :]
        d2 = d2.reshape(Q.shape[0], idx.shape[0], k).transpose(1, 0, 2)  # (E, n, C)
        part = metrics_from_confusion(batch_confusion(y_test, d2.argmin(axis=2), k))
        if levels:
            proba = softmax(-d2 / temp, axis=2)
            for name, m, kl, rows, truth in levels:
                pred = coarse_proba(proba[:, rows], m, kl).argmax(axis=2)
                for key, val in metrics_from_confusion(batch_confusion(truth, pred, kl)).items():
                    part[f"{name}/{key}"] = val
        parts.append(part)
    out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    if levels:
        out["levels"] = {name: {m: out.pop(f"{name}/{m}") for m in
                                ("accuracy", "balanced_accuracy", "macro_f1")}
                         for name, *_ in levels}
        out["level_average"] = np.mean([out["levels"][n]["accuracy"] for n, *_ in levels], axis=0)
    return out
