"""The scaled solver's per-row float64 work along the logits, in row blocks on every core.

Why: with the two data products on both cores (:mod:`embedcyto.probes._products`), the
element-wise float64 work on the (n, K) logits of :mod:`embedcyto.probes._precond` (softmax,
log-sum-exp, residuals, the line search's slope and curvature rows) ran on one core and took
about 40 % of a HiCervix-sized iteration. Here every *per-row* quantity is computed in row
blocks (:meth:`~embedcyto.probes._products.Workers.row_blocks`) on the fit's threads, writing
into buffers made once per C path; every *global* reduction over rows (the loss sum, the slope
and curvature sums, the residual's column sums) stays one serial call on the whole array, made
by the caller in the same order as before. Each row's value is the same operations on the same
numbers whether its block is the whole array or not (the row reductions run along the
contiguous axis, one row at a time), so the results do not depend on the number of blocks,
bit for bit (``tests/test_probes_rows.py``).

Each step keeps the formula it replaces, operation by operation: ``a * b`` for ``b * a``, ``x - 0``
for ``x``, ``np.square(x)`` for ``x ** 2`` are the same IEEE results; fused or reordered
arithmetic would not be, and is not used.
"""

from __future__ import annotations

import numpy as np

from embedcyto.probes._products import Workers


#: Up to this many columns, row maxima are taken column by column (see :func:`_row_max`).
COLUMN_MAX = 64


def _row_max(z: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``z.max(axis=1)`` into ``out``. With few columns, a running ``np.maximum`` over the
    columns (2-3x faster than numpy's reduction over short rows). A maximum is the same number
    whatever the order it is taken in, and NaN propagates in both; only the sign of a zero
    maximum could differ, which changes no bit downstream (``z - max`` then differs only in
    zero signs, and ``exp(-0) = exp(+0)``, ``log(norm) - (-0) = log(norm) - (+0)``)."""
    if z.shape[1] > COLUMN_MAX or z.shape[1] < 2:
        return np.max(z, axis=1, out=out)
    np.maximum(z[:, 0], z[:, 1], out=out)
    for j in range(2, z.shape[1]):
        np.maximum(out, z[:, j], out=out)
    return out


class LogitRows:
    """Per-row terms of the multinomial loss at given logits, for one training set.

    Args:
        y: (n,) encoded labels; n_classes: K; sw: (n,) float64 sample weights or None.
        low: the data's dtype (the residual handed to the ``R^T X`` product is cast to it).
        workers: the fit's threads.
    """

    def __init__(self, y: np.ndarray, n_classes: int, sw: np.ndarray | None, low,
                 workers: Workers):
        n, K = y.size, int(n_classes)
        self.target = np.arange(n) * K + np.asarray(y, dtype=np.intp)  # flat index of y_i
        self.sw, self.workers = sw, workers
        self.blocks = workers.row_blocks(n, K)
        self.prob = np.empty((n, K))  # the softmax at the last logits given
        self.resid = np.empty((n, K))
        self.resid_low = np.empty((n, K), dtype=low)
        self._tmp = np.empty((n, K))
        self._loss, self._slope, self._curv = np.empty(n), np.empty(n), np.empty(n)
        self._max, self._pz = np.empty(n), np.empty(n)

    def _map(self, job) -> None:
        self.workers.run([lambda a=a, b=b: job(a, b) for a, b in self.blocks])

    def _softmax(self, z: np.ndarray, a: int, b: int) -> None:
        """Rows a..b of: prob = softmax(z), loss = (log sum exp(z - max) - (z - max)[y]) * s."""
        p, loss = self.prob[a:b], self._loss[a:b]
        np.subtract(z, _row_max(z, self._max[a:b])[:, None], out=p)
        shifted_y = self.prob.reshape(-1)[self.target[a:b]]
        np.exp(p, out=p)
        norm = p.sum(axis=1)
        np.log(norm, out=loss)
        loss -= shifted_y
        p /= norm[:, None]
        if self.sw is not None:
            loss *= self.sw[a:b]

    def logits(self, xw: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        """``xw.astype(float64) + intercept`` as a new array (float32 to float64 is exact)."""
        out = np.empty(xw.shape)
        self._map(lambda a, b: np.add(xw[a:b], intercept, out=out[a:b]))
        return out

    def softmax(self, logits: np.ndarray) -> float:
        """Fills :attr:`prob`; returns the (weighted) loss sum, one serial sum over all rows."""
        self._map(lambda a, b: self._softmax(logits[a:b], a, b))
        return float(self._loss.sum())

    def trial(self, logits: np.ndarray, alpha: float, dz: np.ndarray, out: np.ndarray):
        """At ``out = logits + alpha * dz``: fills :attr:`prob`; returns the sums of the loss
        rows and of the slope rows ``p.dz - dz_y`` (each weighted), each one serial sum over
        all rows. The curvature, which a line search needs only when it rejects the trial, is
        :meth:`trial_curvature`."""
        def job(a: int, b: int) -> None:
            z, d, t = out[a:b], dz[a:b], self._tmp[a:b]
            np.multiply(d, alpha, out=z)
            z += logits[a:b]
            self._softmax(z, a, b)
            np.multiply(self.prob[a:b], d, out=t)
            pz = self._pz[a:b]
            np.sum(t, axis=1, out=pz)
            slope = self._slope[a:b]
            np.subtract(pz, dz.reshape(-1)[self.target[a:b]], out=slope)
            if self.sw is not None:
                slope *= self.sw[a:b]
        self._map(job)
        return float(self._loss.sum()), float(self._slope.sum())

    def trial_curvature(self, dz: np.ndarray) -> float:
        """The sum of the last :meth:`trial`'s curvature rows ``p.dz^2 - (p.dz)^2`` (weighted),
        one serial sum; valid until the next trial or softmax overwrites :attr:`prob`."""
        def job(a: int, b: int) -> None:
            d, t = dz[a:b], self._tmp[a:b]
            np.multiply(d, d, out=t)
            t *= self.prob[a:b]
            curv = self._curv[a:b]
            np.sum(t, axis=1, out=curv)
            curv -= np.square(self._pz[a:b])
            if self.sw is not None:
                curv *= self.sw[a:b]
        self._map(job)
        return float(self._curv.sum())

    def residual(self):
        """From :attr:`prob`: the weighted residual ``(P - Y) * s`` in the data's dtype and its
        column sums (float64, one serial call)."""
        def job(a: int, b: int) -> None:
            p, r = self.prob[a:b], self.resid[a:b]
            np.copyto(r, p)
            self.resid.reshape(-1)[self.target[a:b]] -= 1.0
            if self.sw is not None:
                r *= self.sw[a:b, None]
            np.copyto(self.resid_low[a:b], r, casting="same_kind")
        self._map(job)
        return self.resid_low, self.resid.sum(axis=0)
