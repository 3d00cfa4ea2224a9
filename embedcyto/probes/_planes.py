"""Scoring a batch of few-shot episodes from its distances laid out as class planes.

A batch's squared distances are held as ``(E, C, n)``: for each episode, one contiguous plane of
``n`` query distances per class. Every reduction over the classes (the nearest class, HiCervix's
level sums and their argmax) is a running comparison or sum of ``C`` whole planes — vectorised,
unlike a reduction over a short innermost axis, which was the slowest step of the episodes — and
gives exactly ``argmin`` / ``argmax`` over the classes (the first index among equal values).

The result of a batch is a set of confusion matrices (``(E, k, k)`` counts for the classes and
for each level): they add up over chunks of queries, so the queries can be scored chunk by chunk
(:mod:`embedcyto.probes.episode_gram`) with the same result as in one go.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from embedcyto.metrics import batch_confusion, metrics_from_confusion

#: Key of the classes' own confusion matrices in :func:`batch_confusions`' result.
CLASSES = ""


def level_setup(levels_test, level_maps, level_names) -> list[tuple]:
    """Per level: ``(name, fine -> level map, level size, rows of the queries that have a label
    at that level, those labels)``; empty without levels."""
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


def chunk_levels(levels: list[tuple], n: int, start: int, stop: int) -> list[tuple]:
    """The :func:`level_setup` entries of queries ``start:stop`` of ``n`` (rows renumbered)."""
    out = []
    for name, m, k, rows, truth in levels:
        full = np.full(n, -1, dtype=np.int64)
        full[rows] = truth
        part = full[start:stop]
        kept = np.flatnonzero(part >= 0)
        out.append((name, m, k, kept, part[kept]))
    return out


def batch_confusions(planes: np.ndarray, y_test: np.ndarray, n_classes: int, levels,
                     temperature: float) -> dict[str, np.ndarray]:
    """Confusion matrices of a batch of episodes from their class planes ``(E, C, n)``.

    Keys: :data:`CLASSES` for the classes, and each level's name. The level predictions take
    the argmax of the unnormalised softmax ``exp(-(d - min d) / T)`` summed up the tree:
    dividing every class of a row by the same positive sum cannot change a row's argmax, so
    the division is skipped. A level class of several fine classes sums their planes
    (:func:`_group_plane`); among the level classes of a single fine class, the best is the
    fine class nearest in distance (``exp`` is increasing), found in the same running pass as
    the nearest class overall (:func:`_argmin_pass`), so HiCervix's finest level costs no pass
    of its own. (Two fine classes whose ``exp`` values round to the same float but whose
    distances differ are told apart by distance: a float32 near-tie.)
    """
    parts = [_level_parts(m, kl) for _, m, kl, _, _ in levels]
    every = tuple(range(planes.shape[1]))
    alone = sorted({p[0] for p in parts if p[0]}, key=len)
    nested = all(set(a) <= set(b) for a, b in zip(alone, alone[1:] + [every]))
    snaps = _argmin_pass(planes, (alone if nested else []) + [every])
    low, pred = snaps[-1]
    found = dict(zip(alone if nested else [], snaps))
    out = {CLASSES: batch_confusion(y_test, pred, n_classes)}
    e = None
    if any(p[1] for p in parts):
        e = np.subtract(low[:, None, :], planes)
        e /= temperature
        np.exp(e, out=e)
    for (name, level_map, kl, rows, truth), (single, groups) in zip(levels, parts):
        best = None
        if single:
            near, arg = found[single] if single in found else _argmin_pass(planes, [single])[0]
            value = np.subtract(low, near)  # the same operations as ``e``: the same bits
            value /= temperature
            np.exp(value, out=value)
            best = (value, np.asarray(level_map)[arg].astype(np.min_scalar_type(-kl)))
        for j, fine in groups:
            best = _take_over(best, _group_plane(e, fine, low.shape), j)
        out[name] = batch_confusion(truth, best[1][:, rows], kl)
    return out


def _level_parts(level_map, n_level: int) -> tuple[tuple[int, ...], list[tuple[int, list]]]:
    """A level's fine classes that are alone in their level class (fine order), and its other
    level classes ``(level index, fine classes)``, in level order."""
    members: list[list[int]] = [[] for _ in range(n_level)]
    for c, j in enumerate(np.asarray(level_map)):
        if j >= 0:
            members[j].append(c)
    return (tuple(sorted(f[0] for f in members if len(f) == 1)),
            [(j, f) for j, f in enumerate(members) if len(f) != 1])


def _group_plane(e, fine: list[int], shape) -> np.ndarray:
    """The sum of the fine classes' planes of ``e``, added plane by plane in fine order from
    zero — the order in which a 0/1 matrix product over the classes accumulates them (a skinny
    product ran at a fifth of the machine's rate). Fine classes mapped to -1 (coarser than the
    level) are in no level class, as in :func:`~embedcyto.metrics.coarse_proba`."""
    total = np.zeros(shape, dtype=np.float32 if e is None else e.dtype)
    for c in fine:
        total += e[:, c]
    return total


def _take_over(best, value: np.ndarray, j: int):
    """The running (value, level index) argmax with one more level class ``j``: it takes over
    where larger, or equal with a lower index (the first index among equal values)."""
    if best is None:
        return value, np.full(value.shape, j, dtype=np.int16)
    top, arg = best
    wins = np.greater(value, top)
    wins |= (value == top) & (arg > j)
    np.copyto(arg, j, where=wins, casting="unsafe")
    np.maximum(top, value, out=top)
    return top, arg


def _argmin_pass(planes: np.ndarray, sets: list[tuple[int, ...]]) -> list[tuple]:
    """(Minimum, first arg-minimum) over axis 1 of ``(E, C, n)`` restricted to each of
    ``sets`` — nested class sets, each inside the next — from one running comparison of the
    planes, visiting each set's new classes after the previous set's. A class visited after a
    higher one also takes over on equal values where the holder's index is higher, so every
    snapshot is the first index among the minima, as ``argmin``."""
    out, seen, best, arg, top = [], set(), None, None, -1
    for members in sets:
        for c in sorted(set(members) - seen):
            plane = planes[:, c]
            if best is None:
                best = plane.copy()
                arg = np.full(best.shape, c, dtype=np.min_scalar_type(-planes.shape[1]))
            else:
                wins = np.less(plane, best)
                if c < top:
                    wins |= (plane == best) & (arg > c)
                np.copyto(arg, c, where=wins)
                np.minimum(best, plane, out=best)
            top, seen = max(top, c), seen | {c}
        out.append((best.copy(), arg.copy()) if members is not sets[-1] else (best, arg))
    return out


def confusion_metrics(confusions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The headline metrics of :func:`batch_confusions`' matrices: the classes' under their
    own names, each level's as ``"level/metric"``."""
    out = {}
    for key, cm in confusions.items():
        for metric, val in metrics_from_confusion(cm).items():
            out[f"{key}/{metric}" if key != CLASSES else metric] = val
    return out


def score_batch(d2: np.ndarray, y_test: np.ndarray, n_classes: int, levels, temperature: float
                ) -> dict[str, np.ndarray]:
    """Metrics of a batch of episodes from their query-prototype distances.

    ``d2`` is ``(n_queries, E, C)``, scored on its class planes ``(E, C, n_queries)`` (a free
    view when the scorer lays its product out that way, as the built-in scorers do; one copy
    otherwise). See :func:`batch_confusions`.
    """
    planes = np.ascontiguousarray(np.moveaxis(d2, 0, 2))  # (E, C, n)
    return confusion_metrics(batch_confusions(planes, y_test, n_classes, levels, temperature))


def plane_argmin(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum and first arg-minimum over axis 1 of ``(E, C, n)``: ``(E, n)`` each."""
    return _argmin_pass(planes, [tuple(range(planes.shape[1]))])[-1]


def ordered_map(items: Iterable, work: Callable, threads: int) -> Iterator:
    """``work(item)`` for every item, yielded in order, computed by ``threads`` threads at once
    (at most ``threads + 1`` items in flight: memory stays a few batches).

    Why threads of single-threaded work: a batch is a BLAS product followed by numpy
    element-wise passes (which release the GIL on large arrays). Run one at a time with a
    multi-threaded BLAS, the BLAS threads spin idle through every element-wise pass: on two
    cores about a fifth of the episodes' processor time was that spinning. The caller holds
    BLAS to one thread (:func:`~embedcyto.probes._multinomial.single_blas_thread`) and each
    batch runs whole in one thread; the numbers do not depend on ``threads``."""
    if threads <= 1:
        for item in items:
            yield work(item)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
