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

import functools
from collections.abc import Mapping, Sequence

import numpy as np

from embedcyto.datasets.sampling import (SupportPool, support_batch, support_ids,  # noqa: F401
                                         support_indices)
from embedcyto.errors import ProbeError
from embedcyto.probes import registry
from embedcyto.probes._base import l2_normalise
from embedcyto.probes._multinomial import single_blas_thread
from embedcyto.probes._planes import confusion_metrics, level_setup, ordered_map, score_batch
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


def run_episodes(X_train, y_train, ids_train, X_test, y_test, shots: int, n_episodes: int,
                 seed: int, method: str = "simpleshot", **kwargs) -> dict:
    """Evaluate ``n_episodes`` few-shot episodes (episodes 0..n-1) of one (shots, seed) with
    queries = the test split: :func:`run_episode_runs` with one run (same keyword options)."""
    return run_episode_runs(X_train, y_train, ids_train, X_test, y_test, [(shots, seed)],
                            n_episodes, method, **kwargs)[0]


#: How :func:`run_episode_runs` computes distances: chosen by cost, or forced.
PATHS = ("auto", "gram", "dense")


def run_episode_runs(X_train, y_train, ids_train, X_test, y_test,
                     runs: Sequence[tuple[int, int]], n_episodes: int,
                     method: str = "simpleshot", *, n_classes: int | None = None,
                     class_names=None, ids_test=None, levels_test=None,
                     level_maps: Mapping[str, Sequence[int]] | None = None,
                     level_names: Sequence[str] = (), temperature: float | None = None,
                     budget: int = 1 << 23, path: str = "auto", **method_options) -> list[dict]:
    """Evaluate ``n_episodes`` few-shot episodes of every ``(shots, seed)`` run, queries = the
    test split; the runs share one pass over the queries where that is cheaper
    (:mod:`embedcyto.probes.episode_gram`).

    Args:
        X_train, y_train, ids_train: the training split (the pool supports are drawn from).
        X_test, y_test: the queries.
        runs, n_episodes: the episodes 0..n-1 of each (shots, seed) (see
            :func:`support_indices`).
        method: an episodic method of :mod:`embedcyto.probes.registry` ("simpleshot": centred,
            L2-normalised; "protonet": raw features).
        ids_test: when given, supports and queries are checked to share no image.
        levels_test, level_maps, level_names: HiCervix per-level evaluation of every episode
            (levels summed up the tree from the softmax over negative distances).
        temperature: softmax temperature (default: the method's registry row).
        budget: floats per batch of episodes (memory knob). Batches are scored on every core
            this process may use, so up to one more batch than cores is held at once.
        path: "auto" (by cost, :func:`~embedcyto.probes.episode_gram.gram_plan`), "gram" or
            "dense" (every run one way; for checks and benchmarks). The two agree up to
            float32 rounding of near-ties.
        method_options: the method's own options, e.g. ``centre="support"`` or ``"train"``
            for SimpleShot (see :func:`simpleshot_distances`).

    Returns:
        Per run: ``{"accuracy", "balanced_accuracy", "macro_f1": arrays (n_episodes,)}`` and,
        with levels, ``"levels": {name: {metric: array}}`` and ``"level_average"`` (mean of
        level accuracies).
    """
    spec = registry.get_method(method)
    if not spec.episodic:
        raise ProbeError(f"{method!r} is not an episodic method; choose one of "
                         f"{', '.join(registry.method_names(registry.EPISODIC))}")
    if int(n_episodes) < 1:
        raise ProbeError(f"n_episodes must be at least 1, got {n_episodes}")
    if path not in PATHS or (path == "gram" and spec.gram is None):
        raise ProbeError(f"unknown episode path {path!r} for {method}: pass `path=` one of "
                         f"{', '.join(PATHS if spec.gram else ('auto', 'dense'))}")
    y_test = np.asarray(y_test, dtype=np.int64)
    k = int(n_classes) if n_classes is not None else int(np.max(y_train)) + 1
    if ids_test is not None and np.intersect1d(np.asarray(ids_train).astype(str),
                                               np.asarray(ids_test).astype(str)).size:
        raise ProbeError("training and test splits share images: supports would leak into queries")
    # Every run's pool now (a class with too few images fails here, before any work); the
    # draws later, each beside another run's numpy work (drawing is Python, under the GIL).
    pools = [SupportPool(ids_train, y_train, shots, k, class_names) for shots, _ in runs]
    supports = [functools.partial(_draw, pool, seed, int(n_episodes))
                for pool, (_, seed) in zip(pools, runs)]
    X_train, X_test = np.asarray(X_train), np.asarray(X_test)
    temp = spec.temperature if temperature is None else float(temperature)
    levels = level_setup(levels_test, level_maps, level_names)
    gram = _gram_runs(spec, path, [s for s, _ in runs], int(n_episodes), k, X_train.shape)
    threads = available_threads()  # read before any one-thread section
    results: list[dict] = [{} for _ in runs]
    if any(gram):
        from embedcyto.probes.episode_gram import run_confusions

        form = _method_call(spec.gram_function(), method, X_train, X_test, method_options)
        chosen = [i for i, g in enumerate(gram) if g]
        confusions = run_confusions(form, [supports[i] for i in chosen], y_test, k, levels,
                                    temp, budget, threads)
        for i, cms in zip(chosen, confusions):
            results[i] = confusion_metrics(cms)
    if not all(gram):
        score = _method_call(spec.scorer_function(), method, X_train, X_test, method_options)
        for i in (i for i, g in enumerate(gram) if not g):
            results[i] = _dense_run(score, supports[i](), X_test.shape, y_test, k, levels, temp,
                                    budget, threads)
    return [_by_level(r, levels) for r in results]


def _draw(pool: SupportPool, seed: int, n_episodes: int) -> np.ndarray:
    """Support rows of episodes 0..n-1 of one run: ``(n_episodes, n_classes, shots)``."""
    return np.stack([pool.draw(seed, e) for e in range(n_episodes)])


def _method_call(function, method: str, X_train, X_test, options):
    try:
        return function(X_train, X_test, **options)
    except TypeError as err:
        raise ProbeError(f"bad options for {method}: {err}") from err


def _gram_runs(spec, path: str, shots, n_episodes: int, n_classes: int, shape) -> list[bool]:
    if spec.gram is None or path == "dense":
        return [False] * len(shots)
    if path == "gram":
        return [True] * len(shots)
    from embedcyto.probes.episode_gram import gram_plan

    return gram_plan(shots, n_episodes, n_classes, shape[0], shape[1])


def _dense_run(score, support, test_shape, y_test, k, levels, temp, budget, threads) -> dict:
    """One run, its prototypes multiplied with all queries, batch by batch, ``threads``
    batches at a time (BLAS held to one thread, see
    :func:`~embedcyto.probes._planes.ordered_map`; up to ``threads + 1`` batches are alive,
    so the memory is that many budgets). The batches are the same whatever ``threads``:
    the same products, bit for bit."""
    step = _batch_size(test_shape[0], k, support.shape[2], test_shape[1], budget)
    batches = [support[start:start + step] for start in range(0, support.shape[0], step)]

    def scored(idx):
        return score_batch(score(idx), y_test, k, levels, temp)

    if len(batches) == 1:  # one batch: nothing to share out (and no thread limits to set)
        parts = [scored(batches[0])]
    else:
        with single_blas_thread():
            parts = list(ordered_map(batches, scored, min(threads, len(batches))))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _by_level(out: dict, levels) -> dict:
    """``"level/metric"`` keys gathered under ``"levels"``, with the level average."""
    if levels:
        out["levels"] = {name: {m: out.pop(f"{name}/{m}") for m in registry.HEADLINE_METRICS}
                         for name, *_ in levels}
        out["level_average"] = np.mean([out["levels"][n]["accuracy"] for n, *_ in levels], axis=0)
    return out
