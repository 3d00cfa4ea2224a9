"""Seeded per-class draws shared by the probe and LoRA stages.

Few-shot support sets, the LoRA stage's validation picks and its fraction subsets are all drawn
here, so that both stages and every model see the same images. Each draw is a pure function of
the candidate ids, their labels, the request and a seed: the random generator is seeded from
the request and a hash of the *sorted* ids, and each class's members are taken in id order.
Hence the draw does not depend on the order rows come in (store rows, dataset records), and a
different pool of images (another split) gives other draws.

Support sets (:func:`support_indices`): the generator of episode ``e`` is seeded from
``(seed, e, shots, ids hash)``; ``shots`` rows are chosen per class without replacement.

Fractions (:func:`fraction_indices`) are *nested*: for one (pool, seed) each class's members are
put in one seeded order that does not depend on the percentage, and ``P`` percent takes the
first ``max(1, round(n_c * P / 100))`` of them. So the 10 % subset is inside the 20 % subset,
and so on, and a fraction curve compares growing training sets rather than unrelated ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

from embedcyto.errors import SamplingError


def _digest_words(sorted_ids: Sequence[str]) -> list[int]:
    digest = hashlib.sha256("\n".join(sorted_ids).encode()).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]


def _as_pool(ids, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids as str, labels as int64, the id order); checks shapes and unique ids."""
    ids = np.asarray(ids).astype(str)
    labels = np.asarray(labels, dtype=np.int64)
    if ids.shape != labels.shape or ids.ndim != 1:
        raise SamplingError(f"ids and labels must be 1-D of equal length ({ids.shape}, "
                            f"{labels.shape})")
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    if sorted_ids.size > 1 and np.any(sorted_ids[1:] == sorted_ids[:-1]):
        raise SamplingError("image ids are not unique: the rows cannot be told apart")
    return ids, labels, order


class SupportPool:
    """Training rows grouped by class in id order, plus the ids' hash (computed once), so that
    many episodes are drawn without redoing the sorting."""

    def __init__(self, ids, labels, shots: int, n_classes: int | None = None,
                 class_names: Sequence[str] | None = None):
        ids, labels, order = _as_pool(ids, labels)
        if int(shots) < 1:
            raise SamplingError(f"shots must be at least 1, got {shots}")
        k = int(n_classes) if n_classes is not None else int(labels.max(initial=-1)) + 1
        self.members = [order[labels[order] == c] for c in range(k)]
        short = [(class_names[c] if class_names is not None else str(c), rows.size)
                 for c, rows in enumerate(self.members) if rows.size < shots]
        if short:
            listing = ", ".join(f"class {name!r} has {n} training images" for name, n in short)
            raise SamplingError(
                f"{listing}, fewer than shots={shots}: use at most "
                f"`shots={min(n for _, n in short)}` or leave those classes out")
        self.digest = _digest_words(ids[order].tolist())
        self.shots = int(shots)

    def draw(self, seed: int, episode: int) -> np.ndarray:
        """Row indices ``(n_classes, shots)`` of one episode."""
        if int(seed) < 0 or int(episode) < 0:
            raise SamplingError(f"seed and episode must be non-negative, got {seed}, {episode}")
        rng = np.random.default_rng([int(seed), int(episode), self.shots, *self.digest])
        return np.stack([rows[rng.choice(rows.size, self.shots, replace=False)]
                         for rows in self.members])


def support_indices(ids, labels, shots: int, seed: int, episode: int, *,
                    n_classes: int | None = None, class_names: Sequence[str] | None = None
                    ) -> np.ndarray:
    """Row indices of one episode's support set: ``shots`` rows of every class, class by class.

    Args:
        ids, labels: the candidate pool (the training split's image ids and labels).
        shots: images per class (K).
        seed, episode: which draw; any non-negative integers.
        n_classes: size of the label space, so a class with no candidate row is reported too.
        class_names: names used in the error message.

    Raises:
        SamplingError: a class has fewer than ``shots`` rows (the message names it and its count).
    """
    return SupportPool(ids, labels, shots, n_classes, class_names).draw(seed, episode).ravel()


def support_ids(ids, labels, shots: int, seed: int, episode: int, **kwargs) -> np.ndarray:
    """Image ids of :func:`support_indices` (what the LoRA stage trains on)."""
    return np.asarray(ids).astype(str)[support_indices(ids, labels, shots, seed, episode, **kwargs)]


def support_batch(ids, labels, shots: int, seed: int, episodes, **kwargs) -> np.ndarray:
    """Support rows of many episodes at once: ``(len(episodes), n_classes, shots)``."""
    pool = SupportPool(ids, labels, shots, kwargs.get("n_classes"), kwargs.get("class_names"))
    return np.stack([pool.draw(seed, e) for e in np.atleast_1d(episodes)])


def _tagged_rng(seed: int, tag: str, sorted_ids: list[str], *extra: int) -> np.random.Generator:
    """A generator seeded by (seed, purpose tag, extra words, hash of the sorted ids)."""
    tag_word = int.from_bytes(hashlib.sha256(tag.encode()).digest()[:4], "little")
    return np.random.default_rng([int(seed), tag_word, *extra, *_digest_words(sorted_ids)])


def _per_class(ids, labels, n_classes: int | None, pick: Callable[[np.ndarray], np.ndarray]
               ) -> np.ndarray:
    """Positions chosen by ``pick(members in id order)`` for each class, concatenated."""
    ids, labels, order = _as_pool(ids, labels)
    k = int(n_classes) if n_classes is not None else int(labels.max(initial=-1)) + 1
    chosen = [np.sort(pick(order[labels[order] == c])) for c in range(k)]
    chosen = [c for c in chosen if c.size]
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def per_class_indices(ids, labels, per_class: int, seed: int, tag: str, *,
                      n_classes: int | None = None) -> np.ndarray:
    """``per_class`` positions of each class (all of a class that has fewer), seeded by
    ``(seed, tag, per_class, ids)``; within a class, sorted. The LoRA stage's validation pick."""
    ids = np.asarray(ids).astype(str)
    rng = _tagged_rng(seed, tag, sorted(ids.tolist()), int(round(per_class * 1000)))

    def pick(members: np.ndarray) -> np.ndarray:
        take = min(int(per_class), members.size)
        return members[rng.choice(members.size, take, replace=False)] if take else members[:0]

    return _per_class(ids, labels, n_classes, pick)


def fraction_count(n: int, percent: float) -> int:
    """Images kept of a class of ``n`` at ``percent``: ``max(1, round(n * P / 100))`` (0 when
    the class is empty, all of it at 100 % or more). Non-decreasing in ``percent``."""
    if n == 0:
        return 0
    if percent >= 100:
        return n
    return min(n, max(1, int(round(n * percent / 100.0))))


def fraction_indices(ids, labels, percent: float, seed: int, tag: str = "fraction", *,
                     n_classes: int | None = None) -> np.ndarray:
    """Positions of a stratified ``percent`` % subset, nested across percentages.

    Each class's members (in id order) are permuted once by a generator seeded from
    ``(seed, tag, ids)`` (not from ``percent``), and the first :func:`fraction_count` of them
    are kept, so for one (ids, labels, seed, tag) a smaller percentage always gives a subset of
    a larger one.

    Raises:
        SamplingError: ``percent`` is not in (0, 100].
    """
    if not 0 < float(percent) <= 100:
        raise SamplingError(f"a fraction must be a percentage in (0, 100], got {percent}")
    ids = np.asarray(ids).astype(str)
    rng = _tagged_rng(seed, f"nested-{tag}", sorted(ids.tolist()))

    def pick(members: np.ndarray) -> np.ndarray:
        ranked = members[rng.permutation(members.size)]
        return ranked[:fraction_count(members.size, float(percent))]

    return _per_class(ids, labels, n_classes, pick)
