"""Cosine k-nearest-neighbour probe, k chosen on validation.

Features are centred on the training mean and L2-normalised, so the dot product is the cosine
similarity of centred embeddings (centring removes the common offset that makes every pair of
CLIP-style embeddings look similar). The training rows' similarities to a query are computed in
chunks of queries, the ``max(ks)`` nearest are kept once, and every k of the grid is scored from
that single sorted list, so choosing k costs one neighbour search.

Votes: ``"majority"`` counts neighbours; ``"distance"`` weights each neighbour by
``exp(similarity / temperature)`` (temperature 0.07, as in DINO's kNN evaluation). Ties between
classes go to the lowest class index. ``predict_proba`` is each class's share of the votes.
"""

from __future__ import annotations

import hashlib

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import StratifiedShuffleSplit

from embedcyto.errors import ProbeError
from embedcyto.probes._base import l2_normalise
from embedcyto.probes._sk import (ProbeInputError, require_two_classes, validate_fit,
                                  validate_predict, validate_val)

DEFAULT_KS = (1, 3, 5, 10, 20, 50)
WEIGHTINGS = ("majority", "distance")
#: Similarities held at once (floats): a block of queries × the whole bank. 2**24 float32 is
#: 64 MiB, whatever the bank's size, so memory stays bounded when the training split grows.
BLOCK_FLOATS = 1 << 24


def neighbours(queries: np.ndarray, bank: np.ndarray, k: int, chunk_size: int = 2048,
               threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices and similarities of the ``k`` most similar bank rows per query, most similar first.

    Both inputs must already be normalised; memory stays at ``rows × len(bank)`` floats, with
    ``rows`` the smaller of ``chunk_size`` and :data:`BLOCK_FLOATS` ``// len(bank)``.
    Equal similarities are ordered by bank row (the lower index first), also where the tie
    straddles the k-th place, so the neighbour list is a pure function of the inputs. The
    similarities are numpy's matrix product; the selection is ``torch.topk`` when torch is
    importable (several times faster than ``np.argpartition`` over 28,000 columns), with the
    same result as the numpy selection.

    Blocks are searched ``threads`` at a time (default: the BLAS threads this process may use),
    each whole — product and selection — in one thread with BLAS held to one thread: a
    multi-threaded product's idle threads spun through every selection. Each block is the same
    product whatever ``threads``; up to ``threads + 1`` blocks are held at once.
    """
    from embedcyto.probes._multinomial import single_blas_thread
    from embedcyto.probes._planes import ordered_map
    from embedcyto.probes._products import available_threads

    k = min(k, bank.shape[0])
    idx = np.empty((queries.shape[0], k), dtype=np.int64)
    sim = np.empty((queries.shape[0], k), dtype=bank.dtype)
    rows = max(1, min(int(chunk_size), BLOCK_FLOATS // max(1, bank.shape[0])))
    starts = range(0, queries.shape[0], rows)

    def search(start: int):
        return start, _top_k(queries[start:start + rows] @ bank.T, k)

    if len(starts) == 1:  # one block: nothing to share out (and no thread limits to set)
        found = [search(0)]
    else:
        threads = min(available_threads() if threads is None else int(threads), len(starts))
        with single_blas_thread():
            found = list(ordered_map(starts, search, threads))
    for start, (top, top_sim) in found:
        idx[start:start + top.shape[0]], sim[start:start + top.shape[0]] = top, top_sim
    return idx, sim


def _top_k(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the k largest entries of each row of ``s``, in the order
    (value descending, column ascending)."""
    n = s.shape[1]
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or k >= n or not np.all(np.isfinite(s)):
        return _top_k_exact(s, k)
    values, top = torch.topk(torch.from_numpy(np.ascontiguousarray(s)), k + 1, dim=1)
    values, top = values.numpy(), top.numpy()
    # Where the k-th and (k+1)-th values are equal, which tied columns make the cut is
    # unspecified: redo those rows exactly (rare with real-valued similarities).
    clean = values[:, k - 1] != values[:, k]
    order = np.lexsort((top[:, :k], -values[:, :k]), axis=1)
    top = np.take_along_axis(top[:, :k], order, axis=1)
    values = np.take_along_axis(values[:, :k], order, axis=1)
    if not clean.all():
        rows = np.flatnonzero(~clean)
        top[rows], values[rows] = _top_k_exact(s[rows], k)
    return top, values


def _top_k_exact(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference selection: a full sort of each row by (value descending, column)."""
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


def _digest(X: np.ndarray) -> tuple:
    """Shape, dtype and a hash of the bytes of ``X`` (a few ms for a validation split)."""
    X = np.ascontiguousarray(X)
    return X.shape, X.dtype.str, hashlib.blake2b(X.data, digest_size=16).digest()


def vote_scores(nb_labels: np.ndarray, nb_sim: np.ndarray, ks, n_classes: int,
                weighting: str, temperature: float) -> np.ndarray:
    """Class scores for each k of ``ks`` from one sorted neighbour list: ``(len(ks), n, C)``.

    Each k's votes are one weighted ``bincount`` over the first k neighbours of every row, so
    memory is ``n × C`` per k (a one-hot ``(n, max k, C)`` array grew past a gigabyte at four
    times HiCervix's rows). The sums are those of a running sum along the neighbour list: every
    class adds its neighbours' weights in list order, starting from zero.
    """
    w = np.ones_like(nb_sim, dtype=float) if weighting == "majority" else \
        np.exp((nb_sim.astype(float) - 1.0) / temperature)  # shift by the max cosine (1) for range
    n, width = nb_labels.shape
    cell = nb_labels.astype(np.int64) + n_classes * np.arange(n, dtype=np.int64)[:, None]
    out = np.empty((len(ks), n, n_classes))
    for i, k in enumerate(ks):
        top = min(k, width)
        out[i] = np.bincount(cell[:, :top].ravel(), weights=w[:, :top].ravel(),
                             minlength=n * n_classes).reshape(n, n_classes)
    return out


class KNNProbe(ClassifierMixin, BaseEstimator):
    """Cosine kNN on centred, L2-normalised embeddings; k picked by validation accuracy.

    Args:
        ks: candidate k values (a single value skips the search); k larger than the number of
            training rows is not considered.
        weighting: "majority" or "distance" (see module docstring).
        temperature: softness of distance weighting.
        center: centre on the training mean before normalising.
        holdout: fraction of training rows held out to choose k when no validation data is given
            (all training rows are then used as neighbours).
        random_state: seed of that holdout.
        chunk_size: queries per similarity block (memory knob, results do not depend on it).

    Attributes:
        classes_, n_features_in_, k_, val_scores_ (accuracy per k, NaN if not evaluated),
        mean_ (centring vector), bank_ (normalised training rows), bank_labels_, selection_.
    """

    def __init__(self, ks=DEFAULT_KS, weighting="majority", temperature=0.07, center=True,
                 holdout=0.2, random_state=0, chunk_size=2048):
        self.ks = ks
        self.weighting = weighting
        self.temperature = temperature
        self.center = center
        self.holdout = holdout
        self.random_state = random_state
        self.chunk_size = chunk_size

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        return l2_normalise(X - self.mean_ if self.center else X)

    def _scores(self, queries, bank, bank_labels, ks, neighbour_list=None) -> np.ndarray:
        idx, sim = neighbour_list or neighbours(queries, bank, max(ks), self.chunk_size)
        return vote_scores(bank_labels[idx], sim, ks, len(self.classes_), self.weighting,
                           self.temperature)

    def fit(self, X, y, X_val=None, y_val=None):
        """Store the normalised training rows and choose k on validation (or a holdout)."""
        if self.weighting not in WEIGHTINGS:
            raise ProbeError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        X, y = validate_fit(self, X, y)
        require_two_classes(self)
        X_val, y_val = validate_val(self, X_val, y_val)
        ks = sorted({int(k) for k in np.atleast_1d(self.ks)})
        if not ks or ks[0] < 1:
            raise ProbeError(f"ks must be positive integers, got {self.ks!r}")
        self.mean_ = X.mean(axis=0) if self.center else np.zeros(X.shape[1], dtype=X.dtype)
        self.bank_, self.bank_labels_ = self._prepare(X), y
        usable = [k for k in ks if k <= y.size] or [y.size]
        self.val_scores_ = np.full(len(ks), np.nan)
        self._val_neighbours = None
        if len(usable) == 1:
            self.k_, self.selection_ = usable[0], "fixed"
            return self
        if X_val is not None:
            bank, bank_y, queries, q_y, self.selection_ = (
                self.bank_, y, self._prepare(X_val), y_val, "validation")
        else:
            train_idx, hold_idx = self._holdout(y)
            bank, bank_y, queries, q_y, self.selection_ = (
                self.bank_[train_idx], y[train_idx], self.bank_[hold_idx], y[hold_idx], "holdout")
            usable = [k for k in usable if k <= train_idx.size] or [train_idx.size]
        found = neighbours(queries, bank, max(usable), self.chunk_size)
        if self.selection_ == "validation":
            self._val_neighbours = (_digest(X_val), found)
        acc = (self._scores(None, bank, bank_y, usable, found).argmax(axis=2) == q_y).mean(axis=1)
        for k, a in zip(usable, acc):
            self.val_scores_[ks.index(k)] = a
        self.k_ = int(usable[int(np.argmax(acc))])  # ties: the smallest k
        return self

    def _holdout(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = np.bincount(y)
        n_hold = int(round(self.holdout * y.size))
        if counts.min() < 2 or n_hold < counts.size or y.size - n_hold < counts.size:
            raise ProbeInputError(
                f"cannot hold out {self.holdout:.0%} of {y.size} training rows stratified over "
                f"{counts.size} classes to choose k: pass validation data or a single k (ks=[5])"
            )
        split = StratifiedShuffleSplit(n_splits=1, test_size=n_hold, random_state=self.random_state)
        return next(split.split(np.zeros(y.size), y))

    def predict_proba(self, X) -> np.ndarray:
        """Share of the (weighted) votes of the k nearest training rows for each class."""
        X = validate_predict(self, X)
        scores = self._scores(None if (found := self._known(X)) else self._prepare(X),
                              self.bank_, self.bank_labels_, [self.k_], found)[0]
        return scores / scores.sum(axis=1, keepdims=True)

    def _known(self, X: np.ndarray):
        """The ``k_`` nearest neighbours of ``X`` if it is the validation data ``fit`` searched.

        Choosing k searched the validation rows' ``max(ks)`` neighbours against the whole bank;
        asked again for the same rows (the runner scores the kept model on validation), the
        first ``k_`` of that list are the neighbours a new search would return, in the same
        order. The rows are recognised by a digest of their bytes, never by object identity,
        so changed data is searched afresh.
        """
        cached = getattr(self, "_val_neighbours", None)
        if cached is None or cached[0] != _digest(X):
            return None
        idx, sim = cached[1]
        k = min(self.k_, self.bank_.shape[0])
        return (idx[:, :k], sim[:, :k]) if k <= idx.shape[1] else None

    def predict(self, X) -> np.ndarray:
        """Class with the most (weighted) votes; ties to the lowest class index."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]
