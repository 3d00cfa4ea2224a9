"""Paired tests on known answers, checked against scipy and statsmodels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from embedcyto import stats


def _models(n=2000, acc=0.8, fix=0.0, seed=0):
    """Per-image correctness of model A, and of B = A with a share ``fix`` of A's errors fixed."""
    rng = np.random.default_rng(seed)
    a = rng.random(n) < acc
    b = a.copy()
    wrong = np.flatnonzero(~a)
    b[rng.choice(wrong, size=int(round(fix * wrong.size)), replace=False)] = True
    return a, b


def test_identical_models_are_not_different():
    a, _ = _models()
    for test in (stats.mcnemar_exact(a, a), stats.paired_bootstrap(a, a, np.random.default_rng(1),
                                                                   n_boot=2000)):
        assert test.diff == 0 and test.p == 1.0
    episodes = np.random.default_rng(2).random(100)
    assert stats.paired_t(episodes, episodes).p == 1.0
    assert stats.sign_flip([0.7, 0.8, 0.75], [0.7, 0.8, 0.75]).p == 1.0


def test_five_percent_of_errors_fixed_is_significant_with_the_right_sign():
    a, b = _models(n=5000, fix=0.05)
    mc = stats.mcnemar_exact(b, a)
    boot = stats.paired_bootstrap(b, a, np.random.default_rng(3), n_boot=4000)
    assert mc.diff > 0 and mc.p < 0.01
    assert boot.diff == pytest.approx(np.mean(b) - np.mean(a)) and 0 < boot.low <= boot.high
    assert boot.p < 0.01
    reverse = stats.paired_bootstrap(a, b, np.random.default_rng(3), n_boot=4000)
    assert reverse.diff < 0 and reverse.high < 0


@pytest.mark.parametrize("n01,n10", [(12, 3), (0, 5), (7, 7), (40, 25), (1, 0)])
def test_mcnemar_matches_statsmodels_on_hand_made_tables(n01, n10):
    from statsmodels.stats.contingency_tables import mcnemar

    both, neither = 30, 10
    a = np.array([1] * both + [1] * n01 + [0] * n10 + [0] * neither, bool)
    b = np.array([1] * both + [0] * n01 + [1] * n10 + [0] * neither, bool)
    table = [[both, n01], [n10, neither]]
    expected = mcnemar(table, exact=True).pvalue
    assert stats.mcnemar_exact(a, b).p == pytest.approx(expected, rel=1e-9)
    assert stats.mcnemar_exact(a, b).p == pytest.approx(
        sps.binomtest(n01, n01 + n10, 0.5).pvalue, rel=1e-9)


def test_paired_bootstrap_interval_matches_scipy():
    a, b = _models(n=400, acc=0.7, fix=0.2, seed=5)
    ours = stats.paired_bootstrap(b, a, np.random.default_rng(0), n_boot=20000)
    ref = sps.bootstrap((b.astype(float), a.astype(float)),
                        lambda x, y, axis: np.mean(x - y, axis=axis), paired=True,
                        vectorized=True, n_resamples=20000, method="percentile",
                        random_state=np.random.default_rng(1)).confidence_interval
    assert ours.low == pytest.approx(ref.low, abs=0.006)
    assert ours.high == pytest.approx(ref.high, abs=0.006)


def test_paired_t_matches_scipy_and_sign_flip_is_exact():
    rng = np.random.default_rng(4)
    a = rng.random(50)
    b = a - 0.02 + 0.05 * rng.standard_normal(50)
    assert stats.paired_t(a, b).p == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-9)
    flip = stats.sign_flip([0.9, 0.8, 0.85], [0.8, 0.7, 0.75])
    assert flip.p == pytest.approx(0.25)  # 2 of the 8 sign patterns are as extreme
    ref = sps.permutation_test(([0.9, 0.8, 0.85, 0.6], [0.8, 0.7, 0.75, 0.65]),
                               lambda x, y: np.mean(x - y), permutation_type="samples")
    assert stats.sign_flip([0.9, 0.8, 0.85, 0.6], [0.8, 0.7, 0.75, 0.65]).p == pytest.approx(
        ref.pvalue)


def test_holm_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = [0.01, 0.04, 0.03, 0.005, 0.5, 0.2]
    np.testing.assert_allclose(stats.holm(p), multipletests(p, method="holm")[1])


def test_tiers_group_models_that_cannot_be_told_apart():
    different = {("a", "c"), ("c", "a"), ("a", "d"), ("b", "d"), ("c", "d")}
    groups = stats.tiers(["d", "b", "a", "c"], [0.5, 0.85, 0.9, 0.8],
                         lambda x, y: (x, y) in different or (y, x) in different)
    assert groups == [["a", "b"], ["c"], ["d"]]
