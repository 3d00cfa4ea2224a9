"""Multinomial L2 logistic regression: scikit-learn's objective, minimised as scikit-learn does.

Why this exists: on HiCervix-sized inputs (28,160 × 1,024, 23 classes) scikit-learn's
``LogisticRegression(solver="lbfgs")`` spends its time in the loss/gradient evaluation (two
skinny matrix products with the data), not in L-BFGS itself. This module minimises *the same
objective with the same optimiser and options*, with three differences that only change the
cost: the products are numpy's (OpenBLAS; torch on request, slower for these skinny shapes:
6.4 against 3.5 ms per SIPaKMeD-sized evaluation on one thread), the data are prepared once per
C path, and with fewer rows than features the fit runs exactly in the row space (see
:func:`_row_space`).

The objective, exactly as scikit-learn 1.x writes it for the lbfgs solver::

    f(W, b) = sum_i s_i * (logsumexp(x_i W^T + b) - (x_i W^T + b)[y_i]) / sum_i s_i
              + ||W||^2 / (2 * C * sum_i s_i)

with sample weights ``s`` (all 1, or the "balanced" class weights ``n / (K * count_y)``), the
intercept ``b`` unpenalised, minimised by ``scipy.optimize.minimize(method="L-BFGS-B")`` with
``gtol=tol, maxiter=max_iter, maxls=50, ftol=64 * eps`` from a warm start. Parameters are laid
out as scikit-learn does (the classes of one feature contiguous, intercepts last), so L-BFGS sees
the same vector. Everything touching the data runs in the input's precision, as in scikit-learn.
The start vector is in the features' dtype too, as scikit-learn's is: scipy then evaluates the
objective at parameters of that dtype, so with float32 features the loss is a consistent
function of float32 points. From a float64 start the float32 loss was rounding noise at the
scale of the late steps and the line search made about twice scikit-learn's evaluations (MLCC's
C path: 1,736 against 998; 1,087 from a float32 start).
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from sklearn.utils.class_weight import compute_class_weight
from threadpoolctl import threadpool_limits

from embedcyto.errors import ProbeError

BACKENDS = ("auto", "torch", "numpy")


@dataclass(frozen=True)
class MultinomialFit:
    """One L-BFGS solution: ``coef`` (n_classes, n_features) and ``intercept`` in the data's
    dtype (as scikit-learn stores them), the iteration and loss-evaluation counts, and scipy's
    verdict."""

    coef: np.ndarray
    intercept: np.ndarray
    n_iter: int
    converged: bool
    message: str
    n_evaluations: int = 0


def class_sample_weight(y: np.ndarray, n_classes: int, class_weight) -> np.ndarray | None:
    """Per-row weights of ``class_weight`` (None, "balanced" or a dict), computed by scikit-learn.

    ``y`` holds encoded labels 0..n_classes-1, every class present (as in any training split the
    probe fits on).
    """
    if class_weight is None:
        return None
    weights = compute_class_weight(class_weight, classes=np.arange(n_classes), y=y)
    return np.asarray(weights, dtype=np.float64)[y]


class _OneBlasThread:
    """Reentrant, thread-safe "one BLAS thread" section shared by concurrent fits.

    ``threadpool_limits`` saves and restores process-wide limits; two fits running in threads
    (joblib's threading backend) would restore them out of order and could leave BLAS on one
    thread for good. Here the first fit to enter sets the limit and the last one to leave
    restores it.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._limits = None
        self._torch_threads = None

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                self._limits = threadpool_limits(1, user_api="blas")
                torch = _loaded_torch()
                if torch is not None:
                    self._torch_threads = torch.get_num_threads()
                    torch.set_num_threads(1)
            self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self._limits.restore_original_limits()
                self._limits = None
                if self._torch_threads is not None:
                    _loaded_torch().set_num_threads(self._torch_threads)
                    self._torch_threads = None


_ONE_BLAS_THREAD = _OneBlasThread()


def single_blas_thread() -> _OneBlasThread:
    """Limit OpenBLAS (numpy's, scipy's) and torch's intra-op pool to one thread while a fit runs.

    L-BFGS-B's own vector work goes through scipy's OpenBLAS. Left multi-threaded, its idle
    threads (and numpy's) spin on the cores that the next loss evaluation needs: on two cores
    that makes each evaluation about 4x slower and a small scikit-learn fit 10x slower. One
    BLAS thread costs little: L-BFGS-B's vectors are short, and the skinny products lose less
    than the spinning costs. torch's own threads
    are limited too (when torch is loaded): on the shared 2-core machine, two torch threads
    waiting on each other made small fits 5-40x slower. The previous limits are restored when
    the last concurrent fit leaves.
    """
    return _ONE_BLAS_THREAD


def _loaded_torch():
    """torch if this process already imported it (limiting its threads never imports it)."""
    return sys.modules.get("torch")


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _row_space(X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Features in an orthonormal basis of their row space when there are fewer rows than
    features: ``(X Q, Q)`` with ``X^T = Q R`` (thin QR, float64), else ``(X, None)``.

    Exact, not an approximation: the logits ``X W^T = (X Q)(W Q)^T`` for every ``W`` in the row
    space, the L2 penalty is rotation-invariant (``||W Q|| = ||W||`` there), the intercept is not
    penalised, and the minimiser lies in the row space (outside it only the penalty acts). Each
    evaluation then costs ``n/p`` of the full one: on MLCC-sized training sets (674 rows of
    1,024 features) the C path took 0.65 s of CPU against 1.05 s, with the same validation
    accuracy at every C.
    """
    n, p = X.shape
    if n >= p:
        return X, None
    basis, upper = np.linalg.qr(X.T.astype(np.float64))
    return np.ascontiguousarray(upper.T, dtype=X.dtype), basis


class MultinomialObjective:
    """The data of one fit (features, labels, weights), ready for repeated loss/gradient calls.

    Built once per training set and reused along the C path: the features are kept (not
    copied, when already contiguous and writeable; rotated to their row space when there are
    fewer rows than features) and the targets' indices are made once.

    Args:
        X: (n, p) float32 or float64 features.
        y: (n,) encoded labels in 0..n_classes-1.
        n_classes: K (> 2 for the multinomial model to differ from scikit-learn's binary one).
        sample_weight: (n,) positive weights or None.
        backend: "numpy" or "auto" (OpenBLAS products: faster for these skinny shapes), or
            "torch".
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, n_classes: int,
                 sample_weight: np.ndarray | None = None, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ProbeError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        X = np.ascontiguousarray(X)
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float64)
        if not X.flags.writeable:  # torch refuses to wrap read-only memory without a warning
            X = X.copy()
        self.n_samples, self.n_features = X.shape
        X, self._basis = _row_space(X)
        self._dim = X.shape[1]
        self.n_classes = int(n_classes)
        self.dtype = X.dtype
        self.sw_sum = float(X.shape[0] if sample_weight is None else np.sum(sample_weight))
        torch = _import_torch() if backend == "torch" else None
        if backend == "torch" and torch is None:
            raise ProbeError("backend='torch' needs torch: pip install torch, or use 'numpy'")
        self.backend = "torch" if torch is not None else "numpy"
        self._rows, self._y = np.arange(X.shape[0]), np.asarray(y, dtype=np.intp)
        onehot = np.zeros((X.shape[0], self.n_classes), dtype=X.dtype)
        onehot[np.arange(X.shape[0]), y] = 1
        sw = None if sample_weight is None else np.asarray(sample_weight, dtype=X.dtype)
        self._X_array, self._onehot_array, self._sw_array = X, onehot, sw
        if torch is not None:
            self._torch = torch
            self._X, self._onehot = torch.from_numpy(X), torch.from_numpy(onehot)
            self._sw = None if sw is None else torch.from_numpy(np.ascontiguousarray(sw))
        else:
            self._X, self._onehot, self._sw = X, onehot, sw

    def data_terms(self, weights_t: np.ndarray, intercept: np.ndarray):
        """Weighted loss sum and the data part of the gradient at (W, b).

        Args:
            weights_t: W transposed, (p, K); intercept: b, (K,).

        Returns:
            (sum_i s_i * loss_i, grad_W (K, p), grad_b (K,)), unscaled by sum(s), all in the
            data's dtype as scikit-learn computes them: with float32 features the loss is a
            float32 sum, and L-BFGS-B stops (``ftol``) once steps no longer change it, as it
            does in scikit-learn. A float64 sum would let it chase rounding noise for many more
            iterations without a better model.
        """
        if self.backend == "torch":
            return self._torch_terms(weights_t, intercept)
        shifted = self._X @ weights_t.astype(self.dtype)
        shifted += intercept.astype(self.dtype)
        shifted -= shifted.max(axis=1, keepdims=True)
        prob = np.exp(shifted)
        norm = prob.sum(axis=1)
        loss = np.log(norm) - shifted[self._rows, self._y]
        prob /= norm[:, None]
        prob[self._rows, self._y] -= 1
        if self._sw is not None:
            loss *= self._sw
            prob *= self._sw[:, None]
        return loss.sum(), prob.T @ self._X, prob.sum(axis=0)

    def _torch_terms(self, weights_t, intercept):
        torch = self._torch
        w = torch.from_numpy(np.ascontiguousarray(weights_t, dtype=self.dtype))
        b = torch.from_numpy(np.ascontiguousarray(intercept, dtype=self.dtype))
        raw = torch.addmm(b, self._X, w)
        lse = torch.logsumexp(raw, dim=1)
        loss = lse - (raw * self._onehot).sum(dim=1)
        resid = torch.exp(raw.sub_(lse[:, None])).sub_(self._onehot)
        if self._sw is not None:
            loss, resid = loss * self._sw, resid.mul_(self._sw[:, None])
        grad_w = resid.T @ self._X
        return loss.sum().numpy()[()], grad_w.numpy(), resid.sum(dim=0).numpy()

    def loss_gradient(self, flat: np.ndarray, l2_reg_strength: float):
        """Objective and gradient for scipy, in scikit-learn's parameter layout.

        ``flat`` is the (p + 1, K) array of [W^T; b] ravelled in C order, which is scikit-learn's
        (K, p + 1) coefficient array ravelled in Fortran order.
        """
        params = flat.reshape(self._dim + 1, self.n_classes)
        weights_t, intercept = params[:-1], params[-1]
        loss_sum, grad_w, grad_b = self.data_terms(weights_t, intercept)
        loss = float(loss_sum / self.dtype.type(self.sw_sum))
        loss += 0.5 * l2_reg_strength * float(np.sum(weights_t ** 2))
        grad = np.empty_like(params)
        grad[:-1] = grad_w.T / self.sw_sum + l2_reg_strength * weights_t
        grad[-1] = grad_b / self.sw_sum
        return loss, grad.ravel()

    def fit(self, C: float, tol: float, max_iter: int, coef=None, intercept=None) -> MultinomialFit:
        """Minimise the objective at ``C`` with scikit-learn's L-BFGS-B options.

        ``coef``/``intercept`` (a previous solution) start the search; zeros otherwise.
        """
        start = np.zeros((self._dim + 1, self.n_classes), dtype=self.dtype)
        if coef is not None:
            coef = np.asarray(coef)
            start[:-1] = (coef if self._basis is None else coef @ self._basis).T
            start[-1] = np.asarray(intercept)
        with single_blas_thread():
            result = minimize(self.loss_gradient, start.ravel(), method="L-BFGS-B", jac=True,
                              args=(1.0 / (C * self.sw_sum),),
                              options={"maxiter": max_iter, "maxls": 50, "gtol": tol,
                                       "ftol": 64 * np.finfo(float).eps})
        params = result.x.reshape(self._dim + 1, self.n_classes)
        coef = params[:-1].T if self._basis is None else params[:-1].T @ self._basis.T
        return MultinomialFit(coef=np.ascontiguousarray(coef, dtype=self.dtype),
                              intercept=params[-1].astype(self.dtype),
                              n_iter=int(min(result.nit, max_iter)),
                              converged=result.status == 0, message=str(result.message),
                              n_evaluations=int(result.nfev))
