"""What the linear probe says when L-BFGS stops early: only about the fit it keeps, and plainly."""

from __future__ import annotations

import logging

import numpy as np

from embedcyto.probes import LinearProbe


def _data(seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(3, 8)) * 2
    y, y_val = np.repeat(np.arange(3), 15), np.repeat(np.arange(3), 5)
    X = (means[y] + rng.normal(size=(45, 8))).astype(np.float32)
    X_val = (means[y_val] + rng.normal(size=(15, 8))).astype(np.float32)
    return X, y, X_val, y_val


def test_an_iteration_cap_on_the_kept_fit_warns_with_the_fix(caplog):
    X, y, X_val, y_val = _data()
    with caplog.at_level(logging.DEBUG, logger="embedcyto.probes.linear"):
        probe = LinearProbe(Cs=[1.0], max_iter=2).fit(X, y, X_val, y_val)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"C={probe.C_:g}" in warnings[0]
    assert "max_iter=2" in warnings[0] and "raise max_iter" in warnings[0]


def test_a_line_search_stop_is_explained_and_not_a_warning(caplog):
    probe = LinearProbe()
    probe.C_, probe._unconverged = 1.0, {1.0: (37, "ABNORMAL: "), 0.1: (5, "ABNORMAL: ")}
    with caplog.at_level(logging.DEBUG, logger="embedcyto.probes.linear"):
        probe._report_convergence()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 1 and "the fit is usable" in info[0] and "no reason given" in info[0]
    assert "(ABNORMAL: )" not in caplog.text


def test_early_stops_of_c_values_not_kept_are_not_warned_about(caplog):
    X, y, X_val, y_val = _data(1)
    with caplog.at_level(logging.WARNING, logger="embedcyto.probes.linear"):
        probe = LinearProbe(max_iter=3, patience=None).fit(X, y, X_val, y_val)
    kept = [r for r in caplog.records if f"C={probe.C_:g}" in r.getMessage()]
    assert len(caplog.records) == len(kept) <= 1
