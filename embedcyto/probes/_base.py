"""Shared pieces of the probes: feature normalisation and input checks.

Normalisation is fitted on the training features only (mean, scale) and applied unchanged to
every other split, so nothing about validation or test rows leaks into the probe.
"""

from __future__ import annotations

import numpy as np

from embedcyto.errors import ProbeError

NORMALISATIONS = ("none", "standard", "l2", "center_l2")


def check_normalisation(name: str) -> str:
    """Validate a normalisation name early, with the list of valid ones in the message."""
    if name not in NORMALISATIONS:
        raise ProbeError(f"unknown normalisation {name!r}; choose one of {', '.join(NORMALISATIONS)}")
    return name


def fit_normaliser(X: np.ndarray, name: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Statistics of a normalisation, learned from the training rows only.

    Returns (mean, scale): ``standard`` uses the per-feature mean and standard deviation (a
    constant feature gets scale 1, so it stays constant instead of dividing by zero);
    ``center_l2`` only the mean; ``none`` and ``l2`` need no statistics.
    """
    check_normalisation(name)
    if name not in ("standard", "center_l2"):
        return None, None
    # Statistics are accumulated in float64: float32 sums overflow for huge (but finite)
    # features, and lose digits on large sets; they are stored in the features' dtype.
    mean64 = X.mean(axis=0, dtype=np.float64)
    if name == "center_l2":
        return mean64.astype(X.dtype), None
    scale = X.std(axis=0, dtype=np.float64)
    scale[scale < 1e-12] = 1.0
    return mean64.astype(X.dtype), scale.astype(X.dtype)


def l2_normalise(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean norm; an all-zero row stays zero."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    if not np.isfinite(norms).all():  # squares overflowed: scale those rows down first
        bad = ~np.isfinite(norms[:, 0])
        peak = np.abs(X[bad]).max(axis=1, keepdims=True)
        scaled = X[bad] / np.maximum(peak, 1e-30)
        X = X.copy()
        X[bad] = scaled
        norms[bad] = np.linalg.norm(scaled, axis=1, keepdims=True)
    return X / np.maximum(norms, 1e-12)


def apply_normaliser(X: np.ndarray, name: str, mean, scale) -> np.ndarray:
    """Apply statistics from :func:`fit_normaliser` to any split."""
    if name in ("standard", "center_l2"):
        X = X - mean
    if name == "standard":
        X = X / scale
    if name in ("l2", "center_l2"):
        X = l2_normalise(X)
    return X

