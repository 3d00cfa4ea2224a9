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
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit

from embedcyto.errors import ProbeError
from embedcyto.probes._base import apply_normaliser, check_normalisation, fit_normaliser
from embedcyto.probes._sk import (ProbeInputError, require_two_classes, validate_fit,
                                  validate_predict, validate_val)

log = logging.getLogger(__name__)

#: The C grid searched when ``Cs`` is None: 13 values, 1e-4 to 1e2 in half decades.
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 13))


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

    Attributes:
        classes_, n_features_in_: as in scikit-learn.
        C_: the chosen C.
        val_scores_: validation accuracy for each searched C (NaN for C not reached).
        coef_, intercept_: the fitted linear model on normalised features.
        mean_, scale_: normalisation statistics (None where unused).
        selection_: "validation", "holdout" or "fixed" — how C was chosen.
    """

    def __init__(self, Cs=None, normalisation="standard", class_weight=None, max_iter=1000,
                 tol=1e-6, holdout=0.2, random_state=0, patience=3):
        self.Cs = Cs
        self.normalisation = normalisation
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.holdout = holdout
        self.random_state = random_state
        self.patience = patience

    def _grid(self) -> np.ndarray:
        grid = np.atleast_1d(np.asarray(DEFAULT_CS if self.Cs is None else self.Cs, dtype=float))
        if grid.size == 0 or np.any(grid <= 0):
            raise ProbeError(f"Cs must be positive numbers, got {self.Cs!r}")
        return np.sort(grid)

    def _model(self, C: float) -> LogisticRegression:
        return LogisticRegression(C=C, class_weight=self.class_weight, max_iter=self.max_iter,
                                  tol=self.tol, warm_start=True)

    def fit(self, X, y, X_val=None, y_val=None):
        """Fit on (X, y); choose C on (X_val, y_val), or on an internal holdout without them."""
        check_normalisation(self.normalisation)
        X, y = validate_fit(self, X, y)
        require_two_classes(self)
        X_val, y_val = validate_val(self, X_val, y_val)
        self.mean_, self.scale_ = fit_normaliser(X, self.normalisation)
        Xn = apply_normaliser(X, self.normalisation, self.mean_, self.scale_)
        grid = self._grid()
        if grid.size == 1:
            self.selection_, best_c = "fixed", float(grid[0])
            self.val_scores_ = np.full(1, np.nan)
            model = self._fit_one(self._model(best_c), Xn, y)
        elif X_val is not None:
            self.selection_ = "validation"
            Xv = apply_normaliser(X_val, self.normalisation, self.mean_, self.scale_)
            best_c, model = self._search(grid, Xn, y, Xv, y_val)
        else:
            self.selection_ = "holdout"
            model = self._fit_with_holdout(grid, Xn, y)
            best_c = model.C
        self.C_ = float(best_c)
        self.coef_ = model.coef_
        self.intercept_ = model.intercept_
        self.n_iter_ = int(np.max(model.n_iter_))
        return self

    def _fit_one(self, model: LogisticRegression, X, y) -> LogisticRegression:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(X, y)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            log.warning("L-BFGS hit max_iter=%d at C=%g; the probe may be under-fitted",
                        self.max_iter, model.C)
        return model

    def _search(self, grid, X, y, Xv, yv) -> tuple[float, LogisticRegression]:
        """Walk the C path with warm starts; keep the coefficients of the best validation C.

        Ties in accuracy (common when validation saturates) go to the lowest validation
        log-loss: accuracy alone would pick the strongest regularisation, whose nearly uniform
        probabilities distort AUROC and the HiCervix level sums.
        """
        model = self._model(float(grid[0]))
        self.val_scores_ = np.full(grid.size, np.nan)
        best, since_best = ((-1.0, -np.inf), None, None, None, None), 0
        for i, c in enumerate(grid):
            model.set_params(C=float(c))
            self._fit_one(model, X, y)
            proba = model.predict_proba(Xv)
            score = float(np.mean(np.argmax(proba, axis=1) == yv))
            log_loss = -float(np.mean(np.log(np.maximum(proba[np.arange(yv.size), yv], 1e-300))))
            self.val_scores_[i] = score
            if (score, -log_loss) > best[0]:
                best = ((score, -log_loss), float(c), model.coef_.copy(),
                        model.intercept_.copy(), np.copy(model.n_iter_))
                since_best = 0
            else:
                since_best += 1
                if self.patience is not None and since_best >= self.patience:
                    break
        kept = self._model(best[1])
        kept.classes_, kept.coef_, kept.intercept_, kept.n_iter_ = (
            model.classes_, best[2], best[3], best[4])
        return best[1], kept

    def _fit_with_holdout(self, grid, X, y) -> LogisticRegression:
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
        best_c, model = self._search(grid, X[train_idx], y[train_idx], X[hold_idx], y[hold_idx])
        model.set_params(C=best_c)
        return self._fit_one(model, X, y)

    def decision_function(self, X) -> np.ndarray:
        """Linear scores (logits) of each class; one column for binary problems, as sklearn."""
        X = validate_predict(self, X)
        scores = apply_normaliser(X, self.normalisation, self.mean_, self.scale_) @ self.coef_.T
        scores = scores + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (softmax of the logits; sigmoid for binary problems)."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p1 = 1.0 / (1.0 + np.exp(-scores))
            return np.column_stack([1.0 - p1, p1])
        z = np.exp(scores - scores.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """Most probable class, in the original label values."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]
