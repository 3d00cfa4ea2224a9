"""Few-shot episodes: support sets shared by every model, and fast batched evaluation.

Support sets are a pure function of (training ids, labels, shots, seed, episode). The random
generator of an episode is seeded from ``(seed, episode, shots)`` and a hash of the *sorted*
training ids, and shots are drawn from each class's rows taken in id order, then mapped back to
row positions. Hence every model's store — whatever order its rows were written in — gets the same
images for the same episode, the LoRA stage can draw the same images through :func:`support_ids`,
and model comparisons are paired. A different training split (other ids) gives other draws.

Queries are the whole test split; supports come from the training split, so the two never
overlap (checked when test ids are given). :func:`run_episodes` evaluates many episodes at once:
features are transformed once, prototypes of a batch of episodes are built by one gather, and
all distances of the batch come from one matrix product.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from embedcyto.errors import ProbeError
from embedcyto.metrics import batch_confusion, coarse_proba, metrics_from_confusion
from embedcyto.probes._base import l2_normalise
from embedcyto.probes._sk import softmax

METHODS = ("simpleshot", "protonet")
DEFAULT_TEMPERATURE = {"simpleshot": 0.1, "protonet": 1.0}


def _ids_digest(sorted_ids: np.ndarray) -> list[int]:
    digest = hashlib.sha256("\n".join(sorted_ids.tolist()).encode()).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]


class _Pool:
    """Training rows grouped by class in id order, plus the ids' hash (computed once)."""

    def __init__(self, ids, labels, shots: int, n_classes: int | None, class_names):
        ids = np.asarray(ids).astype(str)
        labels = np.asarray(labels, dtype=np.int64)
        if ids.shape != labels.shape or ids.ndim != 1:
            raise ProbeError(f"ids and labels must be 1-D of equal length ({ids.shape}, "
                             f"{labels.shape})")
        if int(shots) < 1:
            raise ProbeError(f"shots must be at least 1, got {shots}")
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        if sorted_ids.size > 1 and np.any(sorted_ids[1:] == sorted_ids[:-1]):
            raise ProbeError("image ids are not unique: the store rows cannot be told apart")
        k = int(n_classes) if n_classes is not None else int(labels.max(initial=-1)) + 1
        self.members = [order[labels[order] == c] for c in range(k)]
        short = [(class_names[c] if class_names is not None else str(c), rows.size)
                 for c, rows in enumerate(self.members) if rows.size < shots]
        if short:
            listing = ", ".join(f"class {name!r} has {n} training images" for name, n in short)
            raise ProbeError(
                f"{listing}, fewer than shots={shots}: use at most "
                f"`shots={min(n for _, n in short)}` or leave those classes out")
        self.digest = _ids_digest(sorted_ids)
        self.shots = int(shots)

    def draw(self, seed: int, episode: int) -> np.ndarray:
        """Row indices ``(n_classes, shots)`` of one episode."""
        if int(seed) < 0 or int(episode) < 0:
            raise ProbeError(f"seed and episode must be non-negative, got {seed}, {episode}")
        rng = np.random.default_rng([int(seed), int(episode), self.shots, *self.digest])
        return np.stack([rows[rng.choice(rows.size, self.shots, replace=False)]
                         for rows in self.members])


def support_indices(ids, labels, shots: int, seed: int, episode: int, *,
                    n_classes: int | None = None, class_names: Sequence[str] | None = None
                    ) -> np.ndarray:
    """Row indices of one episode's support set: ``shots`` rows of every class, class by class.

    Args:
        ids, labels: the candidate pool — the training split's image ids and labels.
        shots: images per class (K).
        seed, episode: which draw; any non-negative integers.
        n_classes: size of the label space, so a class with no training row is reported too.
        class_names: names used in the error message.

    Raises:
        ProbeError: a class has fewer than ``shots`` rows (the message names it and its count).
    """
    return _Pool(ids, labels, shots, n_classes, class_names).draw(seed, episode).ravel()


def support_ids(ids, labels, shots: int, seed: int, episode: int, **kwargs) -> np.ndarray:
    """Image ids of :func:`support_indices` — what the LoRA stage trains on."""
    return np.asarray(ids).astype(str)[support_indices(ids, labels, shots, seed, episode, **kwargs)]


def support_batch(ids, labels, shots: int, seed: int, episodes, **kwargs) -> np.ndarray:
    """Support rows of many episodes at once: ``(len(episodes), n_classes, shots)``."""
    pool = _Pool(ids, labels, shots, kwargs.get("n_classes"), kwargs.get("class_names"))
    return np.stack([pool.draw(seed, e) for e in np.atleast_1d(episodes)])


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
