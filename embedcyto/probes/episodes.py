"""Few-shot episodes: support sets shared by every model, and fast batched evaluation.

Support sets are a pure function of (training ids, labels, shots, seed, episode), drawn by
:mod:`embedcyto.datasets.sampling` (re-exported here): every model's store, whatever order its
rows were written in, gets the same images for the same episode, the LoRA stage draws the same
images through the same module, and model comparisons are paired.

Queries are the whole test split; supports come from the training split, so the two never
overlap (checked when test ids are given). :func:`run_episodes` evaluates many episodes at once:
each episodic method of :mod:`embedcyto.probes.registry` names a batched scorer here, which
prepares the features once and then scores a batch of episodes — prototypes built by one
gather, all distances from one matrix product.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from embedcyto.datasets.sampling import support_batch, support_ids, support_indices  # noqa: F401
from embedcyto.errors import ProbeError
from embedcyto.metrics import batch_confusion, coarse_proba, metrics_from_confusion
from embedcyto.probes import registry
from embedcyto.probes._base import l2_normalise


def _plain_scorer(T: np.ndarray, Q: np.ndarray):
    """Squared distances to the class means of ``T`` rows (features already transformed)."""
    q_sq = (Q * Q).sum(axis=1)[:, None]

    def score(idx: np.ndarray) -> np.ndarray:
        protos = T[idx].mean(axis=2)  # (E, C, d)
        flat = protos.reshape(-1, protos.shape[-1])
        d2 = q_sq - 2.0 * (Q @ flat.T) + (flat * flat).sum(axis=1)[None, :]
        return d2.reshape(Q.shape[0], idx.shape[0], idx.shape[1])  # (n, E, C)
    return score


def protonet_distances(X_train: np.ndarray, X_test: np.ndarray):
    """ProtoNet's batched scorer: squared distances to raw class means (no transform)."""
    return _plain_scorer(X_train, X_test)


def simpleshot_distances(X_train: np.ndarray, X_test: np.ndarray, *, centre: str = "support"):
    """SimpleShot's batched scorer (CL2N): centre, L2-normalise, nearest class mean.

    ``centre="support"`` centres every episode on the mean of its own support rows (the field's
    common protocol, and what :class:`~embedcyto.probes.fewshot.SimpleShot` does by default);
    ``"train"`` on the mean of the whole unlabelled training split (``fit(..., X_unlabelled)``),
    which is computed once, so features are transformed once for all episodes.

    With support centring nothing can be precomputed, but nothing per query needs materialising
    either: with m the episode's mean, ``|q - m|² = |q|² - 2 q·m + |m|²`` and
    ``(q - m)·p = q·p - m·p``, so a batch of episodes still costs one matrix product.
    """
    if centre == "train":
        mean = X_train.mean(axis=0)
        return _plain_scorer(l2_normalise(X_train - mean), l2_normalise(X_test - mean))
    if centre != "support":
        raise ProbeError(f"unknown centring {centre!r}; choose support or train")
    q_sq = (X_test * X_test).sum(axis=1)[:, None]

    def score(idx: np.ndarray) -> np.ndarray:
        support = X_train[idx]  # (E, C, K, d)
        mean = support.mean(axis=(1, 2))  # (E, d)
        protos = l2_normalise((support - mean[:, None, None, :]).reshape(-1, support.shape[-1]))
        protos = protos.reshape(support.shape).mean(axis=2)  # (E, C, d)
        norm = np.sqrt(np.maximum(q_sq - 2.0 * (X_test @ mean.T) + (mean * mean).sum(axis=1),
                                  0.0))  # (n, E): |q - m|
        inv = 1.0 / np.maximum(norm, 1e-12)
        flat = protos.reshape(-1, protos.shape[-1])
        dot = (X_test @ flat.T).reshape(X_test.shape[0], *protos.shape[:2])
        dot -= np.einsum("ecd,ed->ec", protos, mean)[None]  # (q - m)·p
        d2 = ((norm * inv) ** 2)[:, :, None] - 2.0 * dot * inv[:, :, None] \
            + (protos * protos).sum(axis=2)[None]
        return d2  # (n, E, C)
    return score


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
                 budget: int = 1 << 23, **method_options) -> dict:
    """Evaluate ``n_episodes`` few-shot episodes (episodes 0..n-1) with queries = the test split.

    Args:
        X_train, y_train, ids_train: the training split (the pool supports are drawn from).
        X_test, y_test: the queries.
        shots, n_episodes, seed: the episodes (see :func:`support_indices`).
        method: an episodic method of :mod:`embedcyto.probes.registry` ("simpleshot": centred,
            L2-normalised; "protonet": raw features).
        ids_test: when given, supports and queries are checked to share no image.
        levels_test, level_maps, level_names: HiCervix per-level evaluation of every episode
            (levels summed up the tree from the softmax over negative distances).
        temperature: softmax temperature (default: the method's registry row).
        budget: floats per batch of episodes (memory knob; results do not depend on it).
        method_options: the method's own options, e.g. ``centre="support"`` or ``"train"``
            for SimpleShot (see :func:`simpleshot_distances`).

    Returns:
        ``{"accuracy", "balanced_accuracy", "macro_f1": arrays (n_episodes,)}`` and, with levels,
        ``"levels": {name: {metric: array}}`` and ``"level_average"`` (mean of level accuracies).
    """
    spec = registry.get_method(method)
    if not spec.episodic:
        raise ProbeError(f"{method!r} is not an episodic method; choose one of "
                         f"{', '.join(registry.method_names(registry.EPISODIC))}")
    if int(n_episodes) < 1:
        raise ProbeError(f"n_episodes must be at least 1, got {n_episodes}")
    y_test = np.asarray(y_test, dtype=np.int64)
    k = int(n_classes) if n_classes is not None else int(np.max(y_train)) + 1
    if ids_test is not None and np.intersect1d(np.asarray(ids_train).astype(str),
                                               np.asarray(ids_test).astype(str)).size:
        raise ProbeError("training and test splits share images: supports would leak into queries")
    support = support_batch(ids_train, y_train, shots, seed, np.arange(int(n_episodes)),
                            n_classes=k, class_names=class_names)
    X_test = np.asarray(X_test)
    try:
        score = spec.scorer_function()(np.asarray(X_train), X_test, **method_options)
    except TypeError as err:
        raise ProbeError(f"bad options for {method}: {err}") from err
    temp = spec.temperature if temperature is None else float(temperature)
    levels = _level_setup(levels_test, level_maps, level_names)
    parts: list[dict] = []
    step = _batch_size(X_test.shape[0], k, int(shots), X_test.shape[1], budget)
    for start in range(0, support.shape[0], step):
        d2 = score(support[start:start + step])  # (n_queries, E, C)
        parts.append(score_batch(d2, y_test, k, levels, temp))
    out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    if levels:
        out["levels"] = {name: {m: out.pop(f"{name}/{m}") for m in registry.HEADLINE_METRICS}
                         for name, *_ in levels}
        out["level_average"] = np.mean([out["levels"][n]["accuracy"] for n, *_ in levels], axis=0)
    return out
