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
from embedcyto.metrics import batch_confusion, metrics_from_confusion
from embedcyto.probes import registry
from embedcyto.probes._base import l2_normalise
from embedcyto.probes._products import available_threads


def _plain_scorer(T: np.ndarray, Q: np.ndarray):
    """Squared distances to the class means of ``T`` rows (features already transformed).

    The product is laid out as class planes ``(E, C, n)`` (what :func:`score_batch` reduces
    over) and returned as its ``(n, E, C)`` view; the arithmetic is done in place, in the
    order ``(|q|² - 2 q·p) + |p|²``.
    """
    q_sq = (Q * Q).sum(axis=1)

    def score(idx: np.ndarray) -> np.ndarray:
        protos = T[idx].mean(axis=2)  # (E, C, d)
        flat = protos.reshape(-1, protos.shape[-1])
        d2 = flat @ Q.T  # (E·C, n)
        d2 *= 2.0
        np.subtract(q_sq[None, :], d2, out=d2)
        d2 += (flat * flat).sum(axis=1)[:, None]
        return d2.reshape(*idx.shape[:2], Q.shape[0]).transpose(2, 0, 1)  # (n, E, C) view
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
    q_sq = (X_test * X_test).sum(axis=1)

    def score(idx: np.ndarray) -> np.ndarray:
        support = X_train[idx]  # (E, C, K, d)
        mean = support.mean(axis=(1, 2))  # (E, d)
        protos = l2_normalise((support - mean[:, None, None, :]).reshape(-1, support.shape[-1]))
        protos = protos.reshape(support.shape).mean(axis=2)  # (E, C, d)
        norm = np.sqrt(np.maximum(q_sq[None, :] - 2.0 * (mean @ X_test.T)
                                  + (mean * mean).sum(axis=1)[:, None], 0.0))  # (E, n): |q - m|
        inv = 1.0 / np.maximum(norm, 1e-12)
        flat = protos.reshape(-1, protos.shape[-1])
        d2 = (flat @ X_test.T).reshape(*protos.shape[:2], X_test.shape[0])  # (E, C, n)
        d2 -= np.einsum("ecd,ed->ec", protos, mean)[:, :, None]  # (q - m)·p
        d2 *= 2.0  # then |q̂|² - 2 q̂·p + |p|², in place, in that order
        d2 *= inv[:, None, :]
        np.subtract(((norm * inv) ** 2)[:, None, :], d2, out=d2)
        d2 += (protos * protos).sum(axis=2)[:, :, None]
        return d2.transpose(2, 0, 1)  # (n, E, C) view of the class planes
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

    ``d2`` is ``(n_queries, E, C)``. Every reduction over the classes runs on *class planes*:
    ``d2`` as ``(E, C, n_queries)`` (a free view when the scorer lays its product out that way,
    as the built-in scorers do; one copy otherwise), where the minimum and its first index are
    a running comparison of ``C`` contiguous planes — vectorised, unlike a reduction over a
    short innermost axis, which was the slowest step of the episodes. The result is exactly
    ``argmin`` over the classes (the first index among equal values).

    The level predictions take the argmax of the unnormalised softmax ``exp(-(d - min d) / T)``
    summed up the tree: dividing every class of a row by the same positive sum cannot change a
    row's argmax, so the division is skipped; each level's sums are added class plane by
    class plane (:func:`_level_sums`).
    """
    planes = np.ascontiguousarray(np.moveaxis(d2, 0, 2))  # (E, C, n)
    low, pred = _plane_argmin(planes)
    part = metrics_from_confusion(batch_confusion(y_test, pred, n_classes))
    if not levels:
        return part
    e = np.subtract(low[:, None, :], planes)
    e /= temperature
    torch = _torch()
    if torch is not None:  # torch's exp, as the probe's earlier versions used
        torch.from_numpy(e).exp_()
    else:
        np.exp(e, out=e)
    for name, level_map, kl, rows, truth in levels:
        level_pred = _plane_argmax(_level_sums(e, level_map, kl))[:, rows]
        for key, val in metrics_from_confusion(batch_confusion(truth, level_pred, kl)).items():
            part[f"{name}/{key}"] = val
    return part


def _level_sums(e: np.ndarray, level_map, n_level: int) -> np.ndarray:
    """``(E, n_level, n)``: each level class's sum of its fine classes' planes of ``e``.

    Added plane by plane in fine-class order from zero — the order in which a 0/1 matrix
    product over the classes accumulates them (a skinny product ran at a fifth of the machine's
    rate); fine classes mapped to -1 (coarser than the level) are left out, as in
    :func:`~embedcyto.metrics.coarse_proba`.
    """
    sums = np.zeros((e.shape[0], n_level, e.shape[2]), dtype=e.dtype)
    for c, j in enumerate(np.asarray(level_map)):
        if j >= 0:
            sums[:, j] += e[:, c]
    return sums


def _plane_arg(planes: np.ndarray, beats, keep) -> tuple[np.ndarray, np.ndarray]:
    """The extreme and its first index over axis 1 of ``(E, C, n)`` (``(E, n)`` each), by a
    running comparison of the ``C`` contiguous planes: ``beats`` (``np.less`` / ``np.greater``)
    says when a plane takes over, ``keep`` (``np.minimum`` / ``np.maximum``) keeps the extreme."""
    best = planes[:, 0].copy()
    arg = np.zeros(best.shape, dtype=np.int64)
    wins = np.empty(best.shape, dtype=bool)
    for c in range(1, planes.shape[1]):
        beats(planes[:, c], best, out=wins)
        np.copyto(arg, c, where=wins)
        keep(best, planes[:, c], out=best)
    return best, arg


def _plane_argmin(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum and first arg-minimum over axis 1 of ``(E, C, n)``: ``(E, n)`` each."""
    return _plane_arg(planes, np.less, np.minimum)


def _plane_argmax(planes: np.ndarray) -> np.ndarray:
    """First arg-maximum over axis 1 of ``(E, C, n)`` (``(E, n)``), as ``argmax``."""
    return _plane_arg(planes, np.greater, np.maximum)[1]


def _scored(batches, score, metrics, pipelined: bool) -> list[dict]:
    """Every batch's metrics, in order. Pipelined, the metrics of one batch (numpy and torch
    element-wise work on one core) are computed in a second thread while the next batch's
    distances (the BLAS product) are computed: the same calls on the same arrays, so the same
    numbers, in about the time of the longer of the two."""
    if not pipelined:
        return [metrics(score(batch)) for batch in batches]
    from concurrent.futures import ThreadPoolExecutor

    parts, pending = [], None
    with ThreadPoolExecutor(1) as pool:
        for batch in batches:
            d2 = score(batch)  # (n_queries, E, C)
            if pending is not None:
                parts.append(pending.result())
            pending = pool.submit(metrics, d2)
        if pending is not None:
            parts.append(pending.result())
    return parts


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
        budget: floats per batch of episodes (memory knob; results do not depend on it). On
            two or more cores a batch's metrics are computed while the next batch's distances
            are, so two batches are held at once.
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
    # Pipelined (two cores), two batches are alive at once: the memory is two budgets. The
    # batches stay those of one core, so the distances are the same products, bit for bit.
    step = _batch_size(X_test.shape[0], k, int(shots), X_test.shape[1], budget)
    pipelined = support.shape[0] > step and available_threads() > 1  # one batch: nothing to overlap
    batches = (support[start:start + step] for start in range(0, support.shape[0], step))
    parts = _scored(batches, score, lambda d2: score_batch(d2, y_test, k, levels, temp),
                    pipelined)
    out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    if levels:
        out["levels"] = {name: {m: out.pop(f"{name}/{m}") for m in registry.HEADLINE_METRICS}
                         for name, *_ in levels}
        out["level_average"] = np.mean([out["levels"][n]["accuracy"] for n, *_ in levels], axis=0)
    return out
