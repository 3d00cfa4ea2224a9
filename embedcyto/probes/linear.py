"""Linear probe: multinomial logistic regression with C chosen on a validation split.

Protocol (why it is this way):
    * The regularisation strength C is picked by validation accuracy over a log grid
      (:data:`DEFAULT_CS`, 1e-4 … 1e2 in half decades). Embeddings of different backbones have
      very different scales and redundancy, so one fixed C would favour some models; a per-model
      search on held-out rows is the standard linear-probe protocol (CLIP, DINOv2, UNI).
    * With a validation split, the model kept is the one fitted on the *training rows only* at the
      chosen C. Refitting on train + val would make the probe see more labelled images than the
      few-shot and LoRA stages it is compared against, and would leave no untouched rows to check
      the choice; it also costs a second fit. Without a validation split, a stratified 20 %
      holdout of the training rows picks C and the probe is then refitted on all training rows
      (the holdout rows are training rows, so keeping them out would only waste labels).
    * The C path runs from strong to weak regularisation with warm starts: each fit starts from
      the previous solution, which is close, so the whole grid costs little more than one fit.
      The path stops once ``patience`` consecutive C values fail to improve the validation score
      (accuracy, ties by log-loss): past the optimum the score only degrades, and the weakly
      regularised fits skipped this way are the slowest to converge. ``patience=None`` walks
      the whole grid.
    * Features are standardised by default (training mean and std): logistic regression on
      standardised features converges in far fewer L-BFGS iterations and C means the same thing
      for every backbone. ``l2`` and ``center_l2`` are offered for cosine-style probes.
    * L-BFGS is deterministic: the same data give the same model whatever ``random_state``; the
      seed only matters for the internal holdout.
    * The model is scikit-learn's ``LogisticRegression`` (lbfgs, L2, intercept unpenalised). With
      more than two classes, every size, its objective (:mod:`embedcyto.probes._multinomial`)
      is minimised by default to scikit-learn's own optimality test (largest gradient entry
      <= tol) by an L-BFGS in eigen-scaled variables (:mod:`embedcyto.probes._precond`), each
      C started from the path's two last solutions extrapolated in log C: the same optimum in
      several times fewer products with the data. ``solver="lbfgs"`` runs scipy's L-BFGS-B on
      scikit-learn's variables instead, which follows scikit-learn's iterates.
      Always using it above two classes, rather than above a size threshold, keeps one solver per
      model type, so a result never changes because a dataset crossed a threshold. Binary
      problems stay on scikit-learn, whose binary model has a single coefficient vector.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit

from embedcyto.errors import ProbeError
from embedcyto.probes._base import apply_normaliser, check_normalisation, fit_normaliser
from embedcyto.probes._multinomial import (MultinomialObjective, class_sample_weight,
                                           single_blas_thread)
from embedcyto.probes._precond import PreconditionedPath, extrapolated_start
from embedcyto.probes._products import available_threads
from embedcyto.probes._sk import (ProbeInputError, require_two_classes, validate_fit,
                                  validate_predict, validate_val)

log = logging.getLogger(__name__)

#: The C grid searched when ``Cs`` is None: 13 values, 1e-4 to 1e2 in half decades.
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 13))
#: Multiclass solvers (see ``LinearProbe``'s ``solver``).
SOLVERS = ("scaled", "lbfgs")


@dataclass(frozen=True)
class _Solution:
    """One point of the C path: the fitted linear model and its L-BFGS iteration count."""

    C: float
    coef: np.ndarray
    intercept: np.ndarray
    n_iter: int
    n_evaluations: int = 0


def _validation_key(solution: _Solution, Xv: np.ndarray, yv: np.ndarray) -> tuple[float, float]:
    """(validation accuracy, minus validation log-loss): larger is better."""
    proba = _proba(Xv @ solution.coef.T + solution.intercept)
    score = float(np.mean(np.argmax(proba, axis=1) == yv))
    log_loss = -float(np.mean(np.log(np.maximum(proba[np.arange(yv.size), yv], 1e-300))))
    return score, -log_loss


def _proba(scores: np.ndarray) -> np.ndarray:
    """Probabilities from logits: softmax, or sigmoid for binary's single column."""
    if scores.shape[1] == 1:
        p1 = 1.0 / (1.0 + np.exp(-scores[:, 0]))
        return np.column_stack([1.0 - p1, p1])
    z = np.exp(scores - scores.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression (L-BFGS) on frozen embeddings, C chosen on validation.

    Args:
        Cs: grid of inverse regularisation strengths, searched in increasing order; a single
            value (or a one-element grid) skips the search.
        normalisation: "standard" (default), "none", "l2" or "center_l2"; fitted on train only.
        class_weight: None or "balanced" (weights inversely proportional to class frequency).
        max_iter: L-BFGS iteration cap per grid point.
        tol: L-BFGS gradient tolerance. Tighter than scikit-learn's 1e-4 on purpose: at 1e-4 the
            weakly regularised fits of small, nearly separable sets stop far enough from their
            optimum that the chosen C depends on the optimisation path (warm or cold start).
        holdout: fraction of training rows held out to choose C when no validation data is given.
        random_state: seed of the internal holdout split (the only randomness).
        patience: stop the C path after this many grid values without improvement (None: never).
        solver: "scaled" (default): scikit-learn's objective minimised to scikit-learn's
            optimality test by L-BFGS in eigen-scaled variables (:mod:`._precond`), several
            times fewer products with the data; "lbfgs": scipy's L-BFGS-B on scikit-learn's own
            variables, which follows scikit-learn's iterates. Binary problems use scikit-learn.

    Attributes:
        classes_, n_features_in_: as in scikit-learn.
        C_: the chosen C.
        val_scores_: validation accuracy for each searched C (NaN for C not reached).
        coef_, intercept_: the fitted linear model on normalised features.
        mean_, scale_: normalisation statistics (None where unused).
        selection_: "validation", "holdout" or "fixed" — how C was chosen.
        n_evaluations_: loss-and-gradient evaluations of the whole C path (multiclass fits; 0
            for binary problems, fitted by scikit-learn).
    """

    def __init__(self, Cs=None, normalisation="standard", class_weight=None, max_iter=1000,
                 tol=1e-6, holdout=0.2, random_state=0, patience=3, solver="scaled"):
        self.Cs = Cs
        self.normalisation = normalisation
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.holdout = holdout
        self.random_state = random_state
        self.patience = patience
        self.solver = solver

    def _grid(self) -> np.ndarray:
        grid = np.atleast_1d(np.asarray(DEFAULT_CS if self.Cs is None else self.Cs, dtype=float))
        if grid.size == 0 or np.any(grid <= 0):
            raise ProbeError(f"Cs must be positive numbers, got {self.Cs!r}")
        return np.sort(grid)

    def fit(self, X, y, X_val=None, y_val=None):
        """Fit on (X, y); choose C on (X_val, y_val), or on an internal holdout without them."""
        check_normalisation(self.normalisation)
        if self.solver not in SOLVERS:
            raise ProbeError(f"unknown linear-probe solver {self.solver!r}: pass `solver=` one "
                             f"of {', '.join(SOLVERS)}")
        self._unconverged: dict[float, tuple[int, str]] = {}
        X, y = validate_fit(self, X, y)
        require_two_classes(self)
        X_val, y_val = validate_val(self, X_val, y_val)
        self.mean_, self.scale_ = fit_normaliser(X, self.normalisation)
        Xn = apply_normaliser(X, self.normalisation, self.mean_, self.scale_)
        grid = self._grid()
        self.n_evaluations_ = 0
        # One thread limit for the whole path: setting it costs milliseconds per fit under load,
        # and the row-space basis (a QR) is computed inside it too.
        # The scaled solver's large products use the cores this process may use (read before
        # the one-thread section; identical bits whatever the count, see ._products).
        self._threads = available_threads()
        with single_blas_thread():
            best = self._choose(grid, Xn, y, X_val, y_val)
        self.C_ = best.C
        self.coef_, self.intercept_, self.n_iter_ = best.coef, best.intercept, best.n_iter
        self._report_convergence()
        return self

    def _choose(self, grid, Xn, y, X_val, y_val) -> _Solution:
        """The solution kept: the single C, or the best one on validation or the holdout."""
        if grid.size == 1:
            self.selection_ = "fixed"
            self.val_scores_ = np.full(1, np.nan)
            return self._solver(Xn, y)(float(grid[0]), None)
        if X_val is not None:
            self.selection_ = "validation"
            Xv = apply_normaliser(X_val, self.normalisation, self.mean_, self.scale_)
            return self._search(grid, self._solver(Xn, y), Xv, y_val)
        self.selection_ = "holdout"
        return self._fit_with_holdout(grid, Xn, y)

    def _solver(self, X, y) -> Callable[[float, _Solution | None], _Solution]:
        """A function ``(C, start) -> solution`` fitting (X, y), warm-started from ``start``.

        More than two classes: scikit-learn's multinomial objective (:class:`MultinomialObjective`,
        the data prepared once for the whole C path) minimised by the scaled L-BFGS (started
        from the path extrapolated in log C when ``start`` is the last solution) or, with
        ``solver="lbfgs"``, by scipy's L-BFGS-B. Two classes: scikit-learn itself, whose binary
        model has one coefficient vector instead of two.
        """
        n_classes = len(self.classes_)
        if n_classes > 2:
            weights = class_sample_weight(y, n_classes, self.class_weight)
            minimiser = (MultinomialObjective(X, y, n_classes, weights) if self.solver == "lbfgs"
                         else PreconditionedPath(X, y, n_classes, weights,
                                                 threads=self._threads))
            path: list[_Solution] = []

            def solve(C: float, start: _Solution | None) -> _Solution:
                begin = () if start is None else (start.coef, start.intercept)
                if self.solver != "lbfgs" and len(path) >= 2 and start is path[-1]:
                    begin = extrapolated_start((path[-2].coef, path[-2].intercept), begin,
                                               path[-2].C, path[-1].C, C)
                fit = minimiser.fit(C, self.tol, self.max_iter, *begin)
                if not fit.converged:
                    self._warn_convergence(C, fit.n_iter, fit.message)
                self.n_evaluations_ += fit.n_evaluations
                path.append(_Solution(C, fit.coef, fit.intercept, fit.n_iter, fit.n_evaluations))
                return path[-1]
            return solve

        def solve_binary(C: float, start: _Solution | None) -> _Solution:
            model = LogisticRegression(C=C, class_weight=self.class_weight,
                                       max_iter=self.max_iter, tol=self.tol, warm_start=True)
            if start is not None:
                model.coef_, model.intercept_ = start.coef, start.intercept
            with warnings.catch_warnings(record=True) as caught, single_blas_thread():
                warnings.simplefilter("always", ConvergenceWarning)
                model.fit(X, y)
            n_iter = int(np.max(model.n_iter_))
            failed = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
            if failed:
                self._warn_convergence(C, n_iter, str(failed[0].message).splitlines()[0])
            return _Solution(C, model.coef_, model.intercept_, n_iter)
        return solve_binary

    def _warn_convergence(self, C: float, n_iter: int, message: str) -> None:
        """Remember an unconverged fit; only the kept one is reported (see :meth:`_report`)."""
        self._unconverged[float(C)] = (n_iter, message.strip())

    def _report_convergence(self) -> None:
        """Warn when the fit that was kept stopped early, saying what it means.

        Fits of other C values that stopped early only lost a comparison on the validation
        score, which is what matters, so they are logged at debug level.
        """
        for C, (n_iter, message) in self._unconverged.items():
            if C != self.C_:
                log.debug("L-BFGS stopped early at C=%g (not kept): %s", C, message)
        if self.C_ not in self._unconverged:
            return
        n_iter, message = self._unconverged[self.C_]
        if n_iter >= self.max_iter:
            log.warning("linear probe: the fit kept (C=%g) used all max_iter=%d L-BFGS "
                        "iterations without reaching tol=%g; it may be under-fitted: raise "
                        "max_iter", self.C_, self.max_iter, self.tol)
        else:
            reason = message.split(":", 1)[-1].strip() or "no reason given"
            log.info("linear probe: L-BFGS stopped at C=%g after %d iterations because its line "
                     "search could not lower the loss further (scipy: %s); this happens when "
                     "the loss is flat to float precision near its minimum, and the fit is "
                     "usable (its validation score chose it)", self.C_, n_iter, reason)

    def _search(self, grid, solve, Xv, yv) -> _Solution:
        """Walk the C path with warm starts; keep the solution of the best validation C.

        Ties in accuracy (common when validation saturates) go to the lowest validation
        log-loss: accuracy alone would pick the strongest regularisation, whose nearly uniform
        probabilities distort AUROC and the HiCervix level sums.
        """
        self.val_scores_ = np.full(grid.size, np.nan)
        best_key, best, current, since_best = (-1.0, -np.inf), None, None, 0
        for i, c in enumerate(grid):
            current = solve(float(c), current)
            key = _validation_key(current, Xv, yv)
            self.val_scores_[i] = key[0]
            if key > best_key:
                best_key, best, since_best = key, current, 0
            else:
                since_best += 1
                if self.patience is not None and since_best >= self.patience:
                    break
        return best

    def _fit_with_holdout(self, grid, X, y) -> _Solution:
        counts = np.bincount(y)
        n_hold = int(round(self.holdout * y.size))
        if counts.min() < 2 or n_hold < counts.size or y.size - n_hold < counts.size:
            raise ProbeInputError(
                f"cannot hold out {self.holdout:.0%} of {y.size} training rows stratified over "
                f"{counts.size} classes (smallest class: {counts.min()} rows) to choose C: pass "
                "validation data (X_val, y_val) or a single C value (Cs=[1.0])"
            )
        split = StratifiedShuffleSplit(n_splits=1, test_size=n_hold, random_state=self.random_state)
        train_idx, hold_idx = next(split.split(X, y))
        best = self._search(grid, self._solver(X[train_idx], y[train_idx]), X[hold_idx],
                            y[hold_idx])
        return self._solver(X, y)(best.C, best)

    def decision_function(self, X) -> np.ndarray:
        """Linear scores (logits) of each class; one column for binary problems, as sklearn."""
        X = validate_predict(self, X)
        scores = apply_normaliser(X, self.normalisation, self.mean_, self.scale_) @ self.coef_.T
        scores = scores + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (softmax of the logits; sigmoid for binary problems)."""
        scores = self.decision_function(X)
        return _proba(scores[:, None] if scores.ndim == 1 else scores)

    def predict(self, X) -> np.ndarray:
        """Most probable class, in the original label values."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]
