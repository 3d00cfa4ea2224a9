"""Thin helpers around scikit-learn's validation utilities, shared by every probe."""

from __future__ import annotations

import numpy as np
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from embedcyto.errors import ProbeError


class ProbeInputError(ProbeError, ValueError):
    """Arrays a probe cannot learn from or score.

    A :class:`ProbeError` (the CLI prints it as one clean line) that is also a ``ValueError``,
    which is what scikit-learn tools (cross-validation, estimator checks) expect of bad input.
    """


def require_two_classes(estimator) -> None:
    """Refuse a single-class training set: there is nothing to discriminate."""
    if len(estimator.classes_) < 2:
        raise ProbeInputError(
            f"training data has 1 class ({estimator.classes_[0]!r}): a classifier needs at "
            "least two; check the labels of the training split")


def require_finite(X, what: str = "X") -> None:
    """Refuse NaN or infinite features, naming the rows, before scikit-learn sees them.

    scikit-learn would raise its own ``ValueError`` deep in a traceback; worse, some paths (a
    centring mean, a prototype) would silently spread one NaN over every prediction.
    """
    arr = X if isinstance(X, np.ndarray) else None
    if arr is None and isinstance(X, (list, tuple)):
        try:
            arr = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError):
            return  # not numbers: scikit-learn's validation gives the precise error
    if arr is None or arr.dtype.kind not in "fc" or arr.ndim != 2:
        return
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        rows = ", ".join(str(i) for i in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise ProbeInputError(
            f"{what} contains NaN or inf values in {bad.size} row(s) (row {rows}): a probe "
            "cannot learn from or score them; drop those rows or re-extract the features")


def validate_fit(estimator, X, y) -> tuple[np.ndarray, np.ndarray]:
    """Check (X, y) for fit, set ``n_features_in_`` and ``classes_``; return X and encoded y.

    Labels may be any hashable values; internally they become 0..n_classes-1 so that the array
    code never has to care, and ``classes_[pred]`` maps back.
    """
    require_finite(X, "X")
    X, y = validate_data(estimator, X, y, dtype=[np.float32, np.float64], reset=True)
    check_classification_targets(y)
    encoder = LabelEncoder().fit(y)
    estimator.classes_ = encoder.classes_
    return X, encoder.transform(y).astype(np.int64)


def validate_val(estimator, X_val, y_val) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Check validation rows against the fitted classes; labels unseen in training are refused."""
    if X_val is None and y_val is None:
        return None, None
    if X_val is None or y_val is None:
        raise ProbeInputError("give both X_val and y_val, or neither")
    require_finite(X_val, "X_val")
    X_val = validate_data(estimator, X_val, dtype=[np.float32, np.float64], reset=False)
    y_val = np.asarray(y_val)
    if y_val.shape != (X_val.shape[0],):
        raise ProbeInputError(f"y_val has shape {y_val.shape}, expected ({X_val.shape[0]},)")
    unknown = np.setdiff1d(y_val, estimator.classes_)
    if unknown.size:
        raise ProbeInputError(f"validation labels {unknown.tolist()[:5]} do not occur in training")
    return X_val, np.searchsorted(estimator.classes_, y_val).astype(np.int64)


def validate_predict(estimator, X) -> np.ndarray:
    """Check a fitted estimator and the features it is asked to score."""
    check_is_fitted(estimator, "classes_")
    require_finite(X, "X")
    return validate_data(estimator, X, dtype=[np.float32, np.float64], reset=False)


def softmax(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (scores shifted by their row maximum)."""
    z = scores - scores.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z
