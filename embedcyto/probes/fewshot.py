"""Prototype classifiers for few-shot episodes: SimpleShot and a ProtoNet-style variant.

SimpleShot (Wang et al. 2019, "CL2N"): centre every embedding on a mean vector, L2-normalise,
average each class's normalised support embeddings into a prototype, and assign a query to the
prototype at the smallest Euclidean distance. The centring mean is, by default, the mean of the
episode's support rows — the common protocol of few-shot evaluation on pathology foundation models
(UNI's and THUNDER's evaluation code), and what ``embedcyto probe`` does by default. With
``fit(..., X_unlabelled=X_train)`` it is the mean of the whole unlabelled training split
(``embedcyto probe --centre train``): no label beyond the K support shots is used either way.
SimpleShot's own paper centres on the mean of disjoint base classes, which these datasets do not
have. :func:`embedcyto.probes.episodes.run_episodes` gives the same per-episode predictions for the
same supports and centring (a test checks it).

ProtoNet-style: squared Euclidean distance to the class means of the raw embeddings (no
centring, no normalisation) — Snell et al.'s classifier without episodic training.

``predict_proba`` is a softmax over negative (squared) distances divided by ``temperature``; the
argmax does not depend on the temperature, probabilities (AUROC, HiCervix level sums) do.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from embedcyto.errors import ProbeError
from embedcyto.probes._base import l2_normalise
from embedcyto.probes._sk import require_finite, softmax, validate_fit, validate_predict


def class_means(X: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean row of each class 0..n_classes-1 (every class must have a row)."""
    sums = np.zeros((n_classes, X.shape[1]), dtype=np.float64)
    np.add.at(sums, y, X)
    counts = np.bincount(y, minlength=n_classes)
    return (sums / counts[:, None]).astype(X.dtype)


def sq_distances(Q: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``(n_queries, n_prototypes)`` via one matrix product."""
    d = (Q * Q).sum(axis=1)[:, None] - 2.0 * (Q @ P.T) + (P * P).sum(axis=1)[None, :]
    return np.maximum(d, 0.0)


class _PrototypeClassifier(ClassifierMixin, BaseEstimator):
    """Nearest prototype; subclasses say how features are transformed before averaging."""

    def _transform(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _fit_prototypes(self, X, y):
        X, y = validate_fit(self, X, y)
        if not np.isfinite(self.temperature) or self.temperature <= 0:
            raise ProbeError(f"temperature must be a positive number, got {self.temperature!r}")
        return X, y

    def predict_proba(self, X) -> np.ndarray:
        """Softmax over ``-distance / temperature`` to each prototype."""
        X = validate_predict(self, X)
        d = sq_distances(self._transform(X), self.prototypes_)
        return softmax(-d / self.temperature, axis=1)

    def predict(self, X) -> np.ndarray:
        """Class of the nearest prototype."""
        X = validate_predict(self, X)
        d = sq_distances(self._transform(X), self.prototypes_)
        return self.classes_[np.argmin(d, axis=1)]


class SimpleShot(_PrototypeClassifier):
    """Nearest class mean on centred, L2-normalised embeddings (CL2N).

    Args:
        temperature: softmax temperature over squared distances (these lie in [0, 4]).

    Attributes:
        classes_, n_features_in_, mean_ (centring vector), prototypes_ (n_classes, n_features),
        center_source_ ("unlabelled" or "support").
    """

    def __init__(self, temperature=0.1):
        self.temperature = temperature

    def _transform(self, X):
        return l2_normalise(X - self.mean_)

    def fit(self, X, y, X_unlabelled=None):
        """Build one prototype per class from the support rows (X, y).

        Args:
            X_unlabelled: rows whose mean centres the features (the training split, labels
                unused); the support mean when None.
        """
        X, y = self._fit_prototypes(X, y)
        if X_unlabelled is not None:
            U = np.asarray(X_unlabelled, dtype=X.dtype)
            require_finite(U, "X_unlabelled")
            if U.ndim != 2 or U.shape[1] != X.shape[1] or U.shape[0] == 0:
                raise ProbeError(f"X_unlabelled must be (n, {X.shape[1]}), got {U.shape}")
            self.mean_, self.center_source_ = U.mean(axis=0), "unlabelled"
        else:
            self.mean_, self.center_source_ = X.mean(axis=0), "support"
        self.prototypes_ = class_means(self._transform(X), y, len(self.classes_))
        return self


class ProtoNet(_PrototypeClassifier):
    """Nearest class mean by squared Euclidean distance on the raw embeddings.

    Args:
        temperature: softmax temperature over squared distances.

    Attributes:
        classes_, n_features_in_, prototypes_.
    """

    def __init__(self, temperature=1.0):
        self.temperature = temperature

    def _transform(self, X):
        return X

    def fit(self, X, y):
        """One prototype per class: the mean of its support rows."""
        X, y = self._fit_prototypes(X, y)
        self.prototypes_ = class_means(X, y, len(self.classes_))
        return self
