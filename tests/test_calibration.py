"""Calibration metrics and temperature scaling on synthetic predictors with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from embedcyto import calibration as cal
from embedcyto.metrics import per_class_scores


def _calibrated(n, k=4, seed=0):
    """Labels drawn from the predicted probabilities: calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = 2.0 * rng.standard_normal((n, k))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    return p, y


def test_a_calibrated_predictor_has_ece_near_zero():
    p, y = _calibrated(20000)
    assert cal.ece(p, y) < 0.015 and cal.classwise_ece(p, y) < 0.01
    assert cal.fit_temperature(p, y) == pytest.approx(1.0, abs=0.05)


def test_over_confidence_raises_ece_and_temperature_scaling_brings_it_down():
    p_val, y_val = _calibrated(5000, seed=1)
    p, y = _calibrated(5000, seed=2)
    sharp_val, sharp = cal.apply_temperature(p_val, 0.4), cal.apply_temperature(p, 0.4)
    before = cal.calibration_summary(sharp, y, sharp_val, y_val)
    assert before["ece"] > 0.08 and before["temperature"] == pytest.approx(2.5, rel=0.1)
    assert before["ece_ts"] < 0.02 and before["nll_ts"] < before["nll"]
    assert before["brier_ts"] < before["brier"]
    assert np.array_equal(cal.apply_temperature(sharp, 2.5).argmax(1), sharp.argmax(1))


def test_hand_computed_values():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 1])
    # bins: 0.9 right, 0.6 wrong, 0.7 right -> |1-.9| + |0-.6| + |1-.7| over 3
    assert cal.ece(p, y) == pytest.approx((0.1 + 0.6 + 0.3) / 3)
    assert cal.brier(p, y) == pytest.approx((0.02 + 0.72 + 0.18) / 3)
    assert cal.nll(p, y) == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.7])))
    bins = cal.reliability(p, y)
    assert bins["count"].sum() == 3 and np.nansum(bins["accuracy"] * bins["count"]) == 2


def test_per_class_scores_match_scikit_learn():
    from sklearn.metrics import precision_recall_fscore_support

    y = np.array([0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0, 2])
    ours = per_class_scores(y, pred, 4)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=0)
    np.testing.assert_allclose(ours["precision"][:3], p)
    np.testing.assert_allclose(ours["recall"][:3], r)
    np.testing.assert_allclose(ours["f1"][:3], f)
    assert ours["support"].tolist() == [2, 2, 3, 0] and np.isnan(ours["recall"][3])
