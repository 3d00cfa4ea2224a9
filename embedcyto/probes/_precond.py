"""Preconditioned L-BFGS for the multinomial objective: scikit-learn's optimum in few iterations.

Why: scikit-learn's L-BFGS-B on standardised embeddings needs hundreds of iterations per C,
because embeddings concentrate their variance in a few directions (the feature covariance's
eigenvalues span four or more decades), and every iteration costs two skinny products with the
data. This solver minimises *the same objective* (:mod:`embedcyto.probes._multinomial`'s, i.e.
scikit-learn's) to *the same optimality test* (largest gradient entry, in scikit-learn's own
coefficients, at most ``tol``) in a better-scaled set of variables, with a line search that
costs no product with the data:

* **Change of variables.** The data term's Hessian, ``sum_i (diag(p_i) - p_i p_i^T) (x) x_i
  x_i^T``, is approximated by the Kronecker product ``A (x) Cov`` of the softmax's mean class
  curvature ``A = mean_i (diag(p_i) - p_i p_i^T)`` (``K x K``, at the start point) and the
  training rows' (weighted, centred) covariance (Martens & Grosse's K-FAC factorisation,
  ICML 2015, there for a network's layers). With the eigenpairs ``Cov = V diag(lambda) V^T``
  and ``A = Q diag(a) Q^T``: ``W^T = V (D * U) Q^T`` with ``D_jc = 1 / sqrt(a_c lambda_j +
  1 / (C S))`` — the data term's curvature along feature direction ``j`` and class direction
  ``c`` is about ``a_c lambda_j`` and the penalty's ``1 / (C S)`` — so in ``U`` the problem is
  close to isotropic, rare classes (small ``p (1 - p)``) included: on HiCervix-sized features
  this took the C path from 380 to 284 evaluations (a single mean curvature for every class,
  the earlier scaling, against this one; the same C and test accuracy on the benchmark's four
  datasets). The intercept is taken for centred rows (``b = c - W mu``, ``c = (e * u) Q^T``,
  ``e_c = 1 / sqrt(a_c)``). The map is linear and invertible, so the minimiser is the same
  point. The data are rotated once into the eigenbasis (orthonormal, nothing dropped; with
  fewer rows than features, into the centred rows' span, see :func:`_centred_row_space`), so
  an iteration maps no ``p x p`` matrix.
* **Line search along the logits.** Along a direction, the logits move linearly:
  ``Z(alpha) = Z + alpha * X D``. One product gives ``X D``; the loss, its slope and its
  curvature at any ``alpha`` then cost ``O(n K)`` and are computed in float64, so the line
  search sees decreases far below float32's resolution of the loss, and every iteration costs
  exactly two products (``X D`` and the gradient's ``R^T X``). That O(n K) work runs in row
  blocks on the fit's threads (:mod:`embedcyto.probes._rows`, the same bits whatever their
  number), and the accepted trial's softmax serves the new point's gradient.
* **Classes' mean direction.** Adding the same vector to every class's coefficients leaves the
  logits' differences unchanged: only the penalty acts on it, and the optimum has none. The
  start is centred over classes (which lowers the penalty and leaves the data term as it is).
  It is ``A``'s null direction (``A 1 = 0``): the data gradient has no component along it, so
  the steps keep none; its scale is the penalty's alone (``1 / sqrt(1 / (C S))``), and an
  intercept shift common to all classes, which changes nothing, is scaled by the mean of the
  other classes' curvatures.

The iterates are kept in float64; the products run in the data's dtype (float32 features:
float32 products, as scikit-learn's). Deterministic: the same data give the same iterates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedcyto.probes._multinomial import MultinomialFit
from embedcyto.probes._products import BlockProducts
from embedcyto.probes._rows import LogitRows

#: L-BFGS memory (scipy's default ``maxcor``; 30 saved under 10 % of the iterations).
MEMORY = 10
#: The line search stops once the slope has fallen below this share of its start value (the
#: curvature condition of Wolfe's test with scipy's 0.9): step 1 nearly always passes it. 0.1
#: (a near-exact search) saved under 10 % of the iterations for 70 % more line-search trials.
SLOPE_SHARE = 0.9
#: Line-search trials per iteration at most (each costs O(n K), no product with the data).
MAX_TRIALS = 30


@dataclass(frozen=True)
class Spectrum:
    """Eigen-decomposition of the training rows' weighted, centred covariance (float64)."""

    mean: np.ndarray  # (p,)
    values: np.ndarray  # (p,), >= 0
    vectors: np.ndarray | None  # (p, p), columns; None once the data are in the eigenbasis


def covariance_spectrum(X: np.ndarray, sample_weight: np.ndarray | None) -> Spectrum:
    """The weighted mean and the covariance's eigenpairs; the Gram product runs in X's dtype."""
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    total = float(X.shape[0] if w is None else w.sum())
    mean = (X.sum(axis=0, dtype=np.float64) if w is None else w @ X.astype(np.float64)) / total
    Xs = X if w is None else X * np.sqrt(w, dtype=np.float64)[:, None].astype(X.dtype)
    gram = (Xs.T @ Xs).astype(np.float64) / total
    cov = gram - np.outer(mean, mean)
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    return Spectrum(mean, np.maximum(values, 0.0), vectors)


@dataclass
class _State:
    """The current point: coefficients (float64), logits, probabilities, loss and gradient."""

    coef_t: np.ndarray  # W^T, (p, K)
    intercept: np.ndarray  # b, (K,)
    logits: np.ndarray  # (n, K) float64, X W^T + b
    loss: float
    grad_t: np.ndarray  # gradient wrt W^T, (p, K)
    grad_b: np.ndarray  # (K,)
    curvature: np.ndarray | None = None  # the softmax's mean class curvature A (K x K); at a
    # fit's start only


class PreconditionedPath:
    """Minimises scikit-learn's multinomial objective (that of
    :class:`~embedcyto.probes._multinomial.MultinomialObjective`) at one C after another with the
    scaled L-BFGS described above; the data are rotated and the spectrum computed once."""

    def __init__(self, X: np.ndarray, y: np.ndarray, n_classes: int,
                 sample_weight: np.ndarray | None = None, threads: int = 1):
        X = np.ascontiguousarray(X)
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float64)
        self.dtype, self.n_classes = X.dtype, int(n_classes)
        self.sw = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        self.S = float(X.shape[0] if self.sw is None else self.sw.sum())
        self.y = np.asarray(y, dtype=np.intp)
        self.to_features, self.offset = None, None  # see _centred_row_space
        if X.shape[0] < X.shape[1]:
            self.X, self.spectrum, self.to_features, self.offset = _centred_row_space(X, self.sw)
        else:
            # The data rotated once into the eigenbasis (one square product, in X's dtype):
            # the coefficients then need no p x p map at each iteration, which cost as much
            # as the data products on SIPaKMeD-sized sets. Exact: the basis is orthonormal.
            spectrum = covariance_spectrum(X, self.sw)
            self.X = BlockProducts(X, threads).xw(spectrum.vectors.astype(X.dtype))
            self.spectrum = Spectrum(spectrum.vectors.T @ spectrum.mean, spectrum.values, None)
            self.to_features = spectrum.vectors
        # The two products of every iteration, split over ``threads`` cores with the same bits
        # as one call (:mod:`embedcyto.probes._products`).
        self.products = BlockProducts(self.X, threads)
        # The float64 work on the (n, K) logits, in row blocks on the same threads, into
        # buffers made once (:mod:`embedcyto.probes._rows`).
        self.terms = LogitRows(self.y, self.n_classes, self.sw, self.X.dtype,
                               self.products.workers)
        self.n_products = 0

    # -- the objective along logits -------------------------------------------------------
    def _logits(self, coef_t, intercept) -> np.ndarray:
        """``X W^T + b`` in float64 (the product in the data's dtype)."""
        self.n_products += 1
        return self.terms.logits(self.products.xw(coef_t.astype(self.X.dtype)), intercept)

    def _state(self, coef_t, intercept, logits, rho, data_loss: float | None = None,
               curvature: bool = False) -> _State:
        """Loss and gradient at a point whose logits are known (one product: ``R^T X``).

        ``data_loss``: the mean data loss when ``self.terms.prob`` already holds the softmax at
        these logits (the line search's accepted trial), which is then not computed again.
        ``curvature``: also compute the softmax's mean class curvature (only the start point's
        is used)."""
        if data_loss is None:
            data_loss = self.terms.softmax(logits) / self.S
        curvature = self._class_curvature() if curvature else None
        resid_low, resid_sum = self.terms.residual()  # (P - Y) * s and its column sums
        self.n_products += 1
        grad_t = (self.products.rtx(resid_low).T.astype(np.float64) / self.S + rho * coef_t)
        loss = data_loss + 0.5 * rho * float(np.sum(coef_t ** 2))
        return _State(coef_t, intercept, logits, loss, grad_t, resid_sum / self.S, curvature)

    def _class_curvature(self) -> np.ndarray:
        """``A = sum_i s_i (diag(p_i) - p_i p_i^T) / S`` at the softmax in ``self.terms.prob``
        (one serial ``K x n x K`` product: the same bits whatever the thread count)."""
        prob = self.terms.prob
        weighted = prob if self.sw is None else prob * self.sw[:, None]
        A = np.diag(weighted.sum(axis=0)) - weighted.T @ prob
        return (A + A.T) / (2 * self.S)

    def fit(self, C: float, tol: float, max_iter: int, coef=None,
            intercept=None) -> MultinomialFit:
        """Minimise the objective at ``C`` from (coef, intercept), zeros by default, until
        scikit-learn's optimality test passes (largest gradient entry <= ``tol``)."""
        first, rho = self.n_products, 1.0 / (C * self.S)
        coef_t, b = np.zeros((self.X.shape[1], self.n_classes)), np.zeros(self.n_classes)
        if coef is not None:
            coef = np.asarray(coef, dtype=np.float64)
            b = np.asarray(intercept, dtype=np.float64).copy()
            if self.offset is not None:
                b = b + coef @ self.offset
            if self.to_features is not None:
                coef = coef @ self.to_features
            coef_t = coef.T - coef.T.mean(axis=1, keepdims=True)  # see the module docstring
        with self.products.workers:  # one thread pool for the fit, none left after it
            state = self._state(coef_t, b, self._logits(coef_t, b), rho, curvature=True)
            scale = _Scaling(self.spectrum, state.curvature, rho)
            state, n_iter, converged, message = _lbfgs(self, state, scale, rho, tol, max_iter)
        coef, b = state.coef_t.T, state.intercept
        if self.to_features is not None:
            coef = coef @ self.to_features.T
        if self.offset is not None:
            b = b - coef @ self.offset
        return MultinomialFit(coef=np.ascontiguousarray(coef, dtype=self.dtype),
                              intercept=b.astype(self.dtype), n_iter=n_iter,
                              converged=converged, message=message,
                              n_evaluations=(self.n_products - first + 1) // 2)

    def line(self, state: _State, dz: np.ndarray, d_coef_t: np.ndarray, rho: float) -> _Line:
        """f(alpha), f'(alpha), f''(alpha) along logits Z + alpha dZ, coefficients W + alpha D."""
        return _Line(self, state, dz, d_coef_t, rho)


class _Line:
    """One line search's objective: ``line(alpha) -> (f, f', f'')``, each trial O(n K).

    The last trial's logits and loss are kept: the step accepted is nearly always that trial,
    whose softmax then serves the new point's gradient without being computed again."""

    def __init__(self, path: PreconditionedPath, state: _State, dz: np.ndarray,
                 d_coef_t: np.ndarray, rho: float):
        self.path, self.state, self.dz, self.rho = path, state, dz, rho
        self.wd, self.dd = float(np.sum(state.coef_t * d_coef_t)), float(np.sum(d_coef_t ** 2))
        self.w2 = float(np.sum(state.coef_t ** 2))
        self.logits = np.empty_like(state.logits)  # Z + alpha dZ at the last trial
        self.alpha, self.data_loss = None, None

    def __call__(self, alpha: float):
        """(f, f', f'') at ``alpha``; f'' as a function, called only when the trial is rejected
        (before the next trial)."""
        path, rho, wd, dd = self.path, self.rho, self.wd, self.dd
        loss, slope = path.terms.trial(self.state.logits, alpha, self.dz, self.logits)
        self.alpha, self.data_loss = alpha, loss / path.S
        f = self.data_loss + 0.5 * rho * (self.w2 + 2 * alpha * wd + alpha ** 2 * dd)
        return (f, slope / path.S + rho * (wd + alpha * dd),
                lambda: path.terms.trial_curvature(self.dz) / path.S + rho * dd)

    def landing(self, alpha: float):
        """(logits, mean data loss or None) at the step ``alpha`` taken: the last trial's when
        ``alpha`` is its step (its softmax is still in ``path.terms.prob``)."""
        if alpha == self.alpha:
            return self.logits, self.data_loss
        return self.state.logits + alpha * self.dz, None


class _Scaling:
    """The linear map between scaled variables (U, u) and scikit-learn's (W^T, b): the
    feature covariance's spectrum times the class curvature's (see the module docstring)."""

    def __init__(self, spectrum: Spectrum, curvature: np.ndarray, rho: float):
        a, self.Q = np.linalg.eigh(curvature)
        a = np.maximum(a, 0.0)
        null = a <= 1e-9 * max(float(a.max()), 1e-300)  # the classes' mean direction
        self.mu = spectrum.mean  # in the rotated data's basis (see PreconditionedPath)
        self.d = 1.0 / np.sqrt(np.outer(spectrum.values, a) + rho)  # (p, K)
        common = float(a[~null].mean()) if (~null).any() else 1.0
        self.e = 1.0 / np.sqrt(np.where(null, common, a))

    def to_original(self, U: np.ndarray, u: np.ndarray):
        """(U, u) -> (W^T, b): W^T = (D * U) Q^T (in the eigenbasis), b = c - W mu,
        c = (e * u) Q^T."""
        coef_t = (self.d * U) @ self.Q.T
        return coef_t, (self.e * u) @ self.Q.T - self.mu @ coef_t

    def grad_to_scaled(self, grad_t: np.ndarray, grad_b: np.ndarray):
        """Chain rule through :meth:`to_original` (its transpose)."""
        g_total = grad_t - np.outer(self.mu, grad_b)
        return self.d * (g_total @ self.Q), self.e * (grad_b @ self.Q)


def _optimality(state: _State, to_features, offset, tol: float) -> bool:
    """scikit-learn's test: the largest gradient entry wrt its own (W, b) at most ``tol``.

    The features' gradient is ``to_features @ grad`` (plus ``offset grad_b^T`` in a centred
    row space). In the eigenbasis of all features (no offset) the test is scikit-learn's
    exactly; the product is skipped while a class column's norm exceeds ``tol * sqrt(p)``
    (the largest entry is at least that norm / sqrt(p)). In a centred row space (see
    :func:`_centred_row_space`) each entry is at most its class column's norm plus
    ``|offset_j| * |grad_b|``, and the test asks for that bound to be at most ``tol``: it
    implies scikit-learn's test whatever the basis. (Testing the features' largest entry
    itself stopped MLCC's flat C = 100 fit one validation row away from its optimum, which
    changed the chosen C.)
    """
    grad_b = float(np.abs(state.grad_b).max())
    if grad_b > tol:
        return False
    if to_features is None:
        return float(np.abs(state.grad_t).max()) <= tol
    norm = float(np.sqrt(np.sum(state.grad_t ** 2, axis=0)).max())
    if offset is not None:
        return norm + float(np.abs(offset).max()) * grad_b <= tol
    if norm > tol * np.sqrt(to_features.shape[0]):
        return False
    return float(np.abs(to_features @ state.grad_t).max()) <= tol


def _centred_row_space(X: np.ndarray, sw: np.ndarray | None):
    """Fewer rows than features: the fit's data, spectrum and maps in the centred rows' span.

    With ``A = diag(sqrt(s)) (X - 1 mu^T) / sqrt(S)`` (weighted mean ``mu``) and the n x n
    eigendecomposition ``A A^T = U diag(lam) U^T``, the covariance's eigenvectors with
    non-zero eigenvalues are ``V = A^T U lam^-1/2`` and the centred rows in that basis are
    ``Z = sqrt(S) diag(s^-1/2) U lam^1/2`` (no product with the data). Exact: the logits are
    ``X W^T + b = Z (W V)^T + c`` with ``c = b + W mu`` for every ``W`` in the span of ``V``, the
    penalty is the same there (orthonormal ``V``), and the minimiser lies there (outside,
    only the penalty acts). Directions of variance below ``n * eps`` of the largest (the
    centring's, duplicated rows') are those of zero variance, left out.

    Returns (Z in X's dtype, its Spectrum, V (p x r), mu).
    """
    w = np.ones(X.shape[0]) if sw is None else sw
    total = float(w.sum())
    mu = (w @ X.astype(np.float64)) / total
    A = (X.astype(np.float64) - mu) * np.sqrt(w / total)[:, None]
    values, U = np.linalg.eigh(A @ A.T)
    keep = values > values.max() * X.shape[0] * np.finfo(np.float64).eps
    values, U = values[keep], U[:, keep]
    Z = np.sqrt(total / w)[:, None] * U * np.sqrt(values)
    V = (A.T @ U) / np.sqrt(values)
    spectrum = Spectrum(np.zeros(values.size), values, None)
    return np.ascontiguousarray(Z, dtype=X.dtype), spectrum, V, mu


def _lbfgs(path: PreconditionedPath, state: _State, scale: _Scaling, rho, tol, max_iter):
    """L-BFGS in the scaled variables; every iteration makes two products with the data."""
    memory: list[tuple[np.ndarray, np.ndarray, float]] = []
    g = np.concatenate([a.ravel() for a in scale.grad_to_scaled(state.grad_t, state.grad_b)])
    p, K = state.coef_t.shape
    for it in range(max_iter + 1):
        if _optimality(state, path.to_features, path.offset, tol):
            return state, it, True, "CONVERGENCE: NORM OF PROJECTED GRADIENT <= PGTOL"
        if it == max_iter:
            return state, it, False, "STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT"
        direction = -_two_loop(g, memory)
        dU, du = direction[:p * K].reshape(p, K), direction[p * K:]
        d_coef_t, d_b = scale.to_original(dU, du)
        dz = path._logits(d_coef_t, d_b)
        slope0 = float(g @ direction)
        line = path.line(state, dz, d_coef_t, rho)
        alpha = _line_search(line, state.loss, slope0)
        if alpha is None:
            return state, it, False, "ABNORMAL_TERMINATION_IN_LNSRCH"
        coef_t = state.coef_t + alpha * d_coef_t
        intercept = state.intercept + alpha * d_b
        logits, data_loss = line.landing(alpha)
        new = path._state(coef_t, intercept, logits, rho, data_loss)
        g_new = np.concatenate([a.ravel() for a in scale.grad_to_scaled(new.grad_t, new.grad_b)])
        s, y = alpha * direction, g_new - g
        sy = float(s @ y)
        if sy > 1e-12 * float(y @ y):
            memory = (memory + [(s, y, 1.0 / sy)])[-MEMORY:]
        state, g = new, g_new
    raise AssertionError("unreachable")


def _two_loop(g: np.ndarray, memory) -> np.ndarray:
    """L-BFGS's inverse-Hessian product; identity scaled by s.y / y.y as initial matrix."""
    q, alphas = g.copy(), []
    for s, y, r in reversed(memory):
        a = r * float(s @ q)
        q -= a * y
        alphas.append(a)
    if memory:
        s, y, _ = memory[-1]
        q *= float(s @ y) / float(y @ y)
    for (s, y, r), a in zip(memory, reversed(alphas)):
        q += (a - r * float(y @ q)) * s
    return q


def _line_search(at, f0: float, slope0: float) -> float | None:
    """A step along the direction where the slope has fallen to SLOPE_SHARE of its start value
    (the loss is convex along it): safeguarded Newton from alpha = 1, bisection fallback.

    ``at(alpha)`` returns (f, f', f''), f'' a number or a function called only when needed
    (the accepted trial's is not). Returns None when the direction does not descend (nothing
    left to gain in float64)."""
    if not slope0 < 0:
        return None
    lo, hi, alpha = 0.0, np.inf, 1.0
    for _ in range(MAX_TRIALS):
        f, slope, curv = at(alpha)
        if abs(slope) <= SLOPE_SHARE * abs(slope0) and f <= f0:
            return alpha
        if slope < 0:
            lo = alpha
        else:
            hi = alpha
        curv = curv() if callable(curv) else curv
        newton = alpha - slope / curv if curv > 0 else np.inf
        if lo < newton < hi:
            alpha = newton
        else:
            alpha = 2 * lo if np.isinf(hi) else 0.5 * (lo + hi)
    return lo if lo > 0 else None


def extrapolated_start(previous, last, C_previous: float, C_last: float, C: float):
    """A start for the fit at ``C``: the path's two last solutions extrapolated linearly in
    log C. The solution path is smooth in log C; on HiCervix-sized features this start halved
    the iterations at C >= 1 (122 against 240 at C = 1, 3.2, 10). Any start reaches the same
    optimum."""
    step = np.log(C / C_last) / np.log(C_last / C_previous)
    return tuple(np.asarray(b, dtype=np.float64) + step * (np.asarray(b, dtype=np.float64)
                                                          - np.asarray(a, dtype=np.float64))
                 for a, b in zip(previous, last))
