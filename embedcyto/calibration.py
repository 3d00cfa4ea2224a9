"""Can a model's probabilities be trusted? Calibration metrics and temperature scaling.

Pure functions on class probabilities (rows summing to 1) and integer labels:

* :func:`ece`: expected calibration error of the top class, 15 equal-width confidence bins
  (Guo et al., ICML 2017): ``sum_b |B_b|/n · |accuracy(B_b) - confidence(B_b)|``.
* :func:`classwise_ece`: the same per class on ``p_k`` against ``[y = k]``, averaged over classes
  (Kull et al., NeurIPS 2019), so that over-confidence on rare classes is not hidden.
* :func:`brier`: multi-class Brier score ``mean_i sum_k (p_ik - [y_i = k])^2`` (Brier 1950).
* :func:`nll`: mean negative log-likelihood of the true class.
* :func:`fit_temperature` / :func:`apply_temperature`: one temperature ``T`` that divides the
  log-probabilities, fitted by minimising the NLL on the *validation* split (Guo et al. 2017).
  Log-probabilities stand in for logits: softmax is unchanged by a per-row constant, so scaling
  ``log p`` by ``1/T`` is exactly temperature scaling of the logits. ``T > 1`` softens an
  over-confident model; the predicted class never changes.
"""

from __future__ import annotations

import numpy as np

from embedcyto.errors import ProbeError

N_BINS = 15
_EPS = 1e-12


def _check(proba, y) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(proba, dtype=float)
    t = np.asarray(y, dtype=np.int64)
    if p.ndim != 2 or t.shape != (p.shape[0],) or p.shape[0] == 0:
        raise ProbeError(f"need (n, k) probabilities and n labels, got {p.shape} and {t.shape}")
    if t.min() < 0 or t.max() >= p.shape[1]:
        raise ProbeError(f"labels fall outside [0, {p.shape[1]})")
    return p, t


def _binned_gap(confidence: np.ndarray, hit: np.ndarray, n_bins: int) -> float:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    conf = np.bincount(which, weights=confidence, minlength=n_bins)
    acc = np.bincount(which, weights=hit, minlength=n_bins)
    return float(np.abs(acc - conf).sum() / confidence.size)


def ece(proba, y, n_bins: int = N_BINS) -> float:
    """Expected calibration error of the top-class confidence (0 = perfectly calibrated)."""
    p, t = _check(proba, y)
    return _binned_gap(p.max(axis=1), (p.argmax(axis=1) == t).astype(float), n_bins)


def classwise_ece(proba, y, n_bins: int = N_BINS) -> float:
    """Mean over classes of the ECE of ``p_k`` against ``[y = k]``."""
    p, t = _check(proba, y)
    return float(np.mean([_binned_gap(p[:, k], (t == k).astype(float), n_bins)
                          for k in range(p.shape[1])]))


def reliability(proba, y, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Per confidence bin: mean confidence, accuracy and count (empty bins: NaN, 0)."""
    p, t = _check(proba, y)
    confidence, hit = p.max(axis=1), (p.argmax(axis=1) == t).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(which, weights=confidence, minlength=n_bins) / count
        acc = np.bincount(which, weights=hit, minlength=n_bins) / count
    return {"confidence": conf, "accuracy": acc, "count": count}


def brier(proba, y) -> float:
    """Multi-class Brier score (0 best, 2 worst)."""
    p, t = _check(proba, y)
    onehot = np.zeros_like(p)
    onehot[np.arange(t.size), t] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def nll(proba, y) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped at 1e-12)."""
    p, t = _check(proba, y)
    return max(0.0, float(-np.mean(np.log(np.clip(p[np.arange(t.size), t], _EPS, None)))))


def apply_temperature(proba, temperature: float) -> np.ndarray:
    """Probabilities ``softmax(log p / T)``; the argmax is unchanged."""
    if not temperature > 0:
        raise ProbeError(f"temperature must be positive, got {temperature}")
    logits = np.log(np.clip(np.asarray(proba, dtype=float), _EPS, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def fit_temperature(proba_val, y_val) -> float:
    """The temperature minimising the validation NLL (searched over T in [0.05, 20])."""
    from scipy.optimize import minimize_scalar

    p, t = _check(proba_val, y_val)
    best = minimize_scalar(lambda log_t: nll(apply_temperature(p, float(np.exp(log_t))), t),
                           bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                           options={"xatol": 1e-4})
    return float(np.exp(best.x))


def calibration_summary(proba, y, proba_val=None, y_val=None) -> dict[str, float]:
    """ECE, classwise ECE, Brier and NLL, and the same after temperature scaling when
    validation predictions are given (keys ending ``_ts``, plus ``temperature``)."""
    out = {"ece": ece(proba, y), "classwise_ece": classwise_ece(proba, y),
           "brier": brier(proba, y), "nll": nll(proba, y)}
    if proba_val is not None and y_val is not None and len(y_val):
        temperature = fit_temperature(proba_val, y_val)
        scaled = apply_temperature(proba, temperature)
        out.update(temperature=temperature, ece_ts=ece(scaled, y),
                   classwise_ece_ts=classwise_ece(scaled, y), brier_ts=brier(scaled, y),
                   nll_ts=nll(scaled, y))
    return out
