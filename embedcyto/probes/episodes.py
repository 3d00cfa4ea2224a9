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


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def score_batch(d2: np.ndarray, y_test: np.ndarray, n_classes: int, levels, temperature: float
                ) -> dict[str, np.ndarray]:
    """Metrics of a batch of episodes from their query-prototype distances.

    ``d2`` is ``(n_queries, E, C)``, as the distance product lays it out: every reduction runs
    over its last, contiguous axis (an argmin over the classes of a transposed ``(E, n, C)``
    view was the slowest step of the episodes). The level predictions take the argmax of the
    unnormalised softmax ``exp(-(d - min d) / T)`` summed up the tree: dividing every class of a
    row by the same positive sum cannot change a row's argmax, so the division is skipped;
    one matrix product sums the fine classes into every level at once.
    """
    torch = _torch()
    if torch is not None:
        d = torch.from_numpy(np.ascontiguousarray(d2))
        pred = d.argmin(dim=2).numpy().T
    else:
        pred = d2.argmin(axis=2).T
    part = metrics_from_confusion(batch_confusion(y_test, pred, n_classes))
    if not levels:
        return part
    maps = np.concatenate([_level_onehot(m, kl) for _, m, kl, _, _ in levels], axis=1)
    if torch is not None:
        e = torch.exp(d.amin(dim=2, keepdim=True).sub(d).div_(temperature))
        sums = (e.reshape(-1, n_classes) @ torch.from_numpy(maps.astype(d2.dtype))).numpy()
    else:
        e = np.exp((d2.min(axis=2, keepdims=True) - d2) / temperature)
        sums = e.reshape(-1, n_classes) @ maps.astype(d2.dtype)
    sums = sums.reshape(d2.shape[0], d2.shape[1], -1)
    first = 0
    for name, _, kl, rows, truth in levels:
        level_pred = sums[rows, :, first:first + kl].argmax(axis=2).T
        first += kl
        for key, val in metrics_from_confusion(batch_confusion(truth, level_pred, kl)).items():
            part[f"{name}/{key}"] = val
    return part


def _level_onehot(level_map, n_level_classes: int) -> np.ndarray:
    """``(n_fine, n_level)`` 0/1 matrix summing fine classes into a level (as ``coarse_proba``)."""
    return coarse_proba(np.eye(len(level_map)), level_map, n_level_classes)


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
        parts.append(score_batch(d2.reshape(Q.shape[0], idx.shape[0], k), y_test, k, levels,
                                 temp))
    out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    if levels:
        out["levels"] = {name: {m: out.pop(f"{name}/{m}") for m in
                                ("accuracy", "balanced_accuracy", "macro_f1")}
                         for name, *_ in levels}
        out["level_average"] = np.mean([out["levels"][n]["accuracy"] for n, *_ in levels], axis=0)
    return out
