"""Paired significance tests as pure functions: is model A really better than model B?

Every model of a dataset is scored on the same test images and, for few-shot probes, on the same
support sets (episodes are drawn from the seed alone), so differences between models are
*paired*. Pairing removes the variation that both models share (hard images, unlucky support
sets) and gives far sharper answers than comparing two means ± std.

* Over test images (full-data probes, LoRA): :func:`paired_bootstrap` resamples images and
  gives the accuracy difference with a percentile interval; :func:`mcnemar_exact` tests the
  discordant pairs (A right and B wrong, or the reverse) with an exact binomial test.
* Over episodes or seeds: :func:`paired_t` (episodes: hundreds of pairs, the t interval is
  accurate) and :func:`sign_flip` (seeds: a handful of pairs, an exact randomisation test).
* Many pairs at once: :func:`holm` adjusts p-values so that the chance of any false "A beats B"
  stays below the level; :func:`tiers` groups models that are not significantly different.

Sources: McNemar (1947), the exact (binomial) form as in statsmodels' ``mcnemar(exact=True)``;
the paired bootstrap of Efron & Tibshirani (1993, ch. 16) with the shifted-null p-value of
Berg-Kirkpatrick et al. (EMNLP 2012); Holm (Scand. J. Statist. 1979).
Randomness comes only from the ``np.random.Generator`` passed in.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from embedcyto.errors import ProbeError


@dataclass(frozen=True)
class PairedTest:
    """Difference ``mean(a - b)`` with its interval ``[low, high]`` and a two-sided p-value."""

    diff: float
    low: float
    high: float
    p: float
    n: int
    test: str


def _paired(a, b, name: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if x.shape != y.shape:
        raise ProbeError(f"{name} needs paired values: {x.size} vs {y.size}")
    if x.size == 0:
        raise ProbeError(f"{name} needs at least one pair")
    return x, y


def mcnemar_exact(correct_a, correct_b) -> PairedTest:
    """McNemar's exact test on two models' right/wrong answers to the same images.

    Only discordant images count: ``n01`` (A right, B wrong) and ``n10`` (the reverse). Under
    "no difference" each discordant image is a fair coin, so the two-sided p-value is
    ``min(1, 2 · P(Binom(n01 + n10, ½) ≤ min(n01, n10)))``. ``diff`` is the accuracy difference
    ``(n01 - n10) / n``; the interval is the paired bootstrap's job, so it is left as NaN.
    """
    from scipy import stats

    a, b = _paired(correct_a, correct_b, "McNemar's test")
    a, b = a.astype(bool), b.astype(bool)
    n01, n10 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = n01 + n10
    p = 1.0 if discordant == 0 else min(1.0, 2 * stats.binom.cdf(min(n01, n10), discordant, 0.5))
    return PairedTest((n01 - n10) / a.size, float("nan"), float("nan"), float(p), a.size,
                      "mcnemar")


def paired_bootstrap(a, b, rng: np.random.Generator, n_boot: int = 10000,
                     level: float = 0.95) -> PairedTest:
    """Paired bootstrap over images of ``mean(a) - mean(b)`` (a, b: per-image scores).

    Images are resampled with replacement, the same images for both models. The interval is the
    percentile interval of the resampled differences; the p-value is the share of resampled
    differences at least as far from the observed one as the observed one is from 0 (the
    resampled distribution shifted to the null), counted with the observed value itself.
    """
    x, y = _paired(a, b, "the paired bootstrap")
    d = x - y
    observed = float(d.mean())
    means = _resampled_means(d, rng, int(n_boot))
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    extreme = np.sum(np.abs(means - observed) >= abs(observed) - 1e-12)
    p = (1 + extreme) / (1 + means.size)
    return PairedTest(observed, float(low), float(high), float(min(1.0, p)), d.size, "bootstrap")


def _resampled_means(d: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Means of ``n_boot`` resamples of ``d`` with replacement.

    Per-image differences take few distinct values (-1, 0, 1, or shares of seeds), so a resample
    is drawn as multinomial counts of those values: the same distribution as drawing indices,
    at a cost that does not grow with the number of images.
    """
    values, counts = np.unique(d, return_counts=True)
    if values.size <= 64:
        draws = rng.multinomial(d.size, counts / d.size, size=n_boot)
        return draws @ values / d.size
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // d.size)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        means[start:stop] = d[rng.integers(0, d.size, size=(stop - start, d.size))].mean(axis=1)
    return means


def paired_t(a, b, level: float = 0.95) -> PairedTest:
    """Paired t-test and t interval of ``mean(a - b)`` (over episodes: same support sets)."""
    from scipy import stats

    x, y = _paired(a, b, "the paired t-test")
    d = x - y
    mean = float(d.mean())
    if d.size < 2 or np.all(d == d[0]):
        p = 1.0 if mean == 0 else 0.0
        return PairedTest(mean, mean, mean, p if d.size > 1 else 1.0, d.size, "paired-t")
    se = d.std(ddof=1) / np.sqrt(d.size)
    t_crit = stats.t.ppf((1 + level) / 2, d.size - 1)
    p = 2 * stats.t.sf(abs(mean / se), d.size - 1)
    return PairedTest(mean, mean - t_crit * se, mean + t_crit * se, float(p), d.size, "paired-t")


def sign_flip(a, b, rng: np.random.Generator | None = None, n_perm: int = 10000) -> PairedTest:
    """Randomisation test of ``mean(a - b)``: flip the sign of each paired difference.

    Exact (all ``2^n`` sign patterns) for up to 16 pairs, as with a few seeds; Monte Carlo with
    ``rng`` beyond. With 3 seeds the smallest possible p-value is 0.25: three seeds can never
    show a significant difference on their own, and the result says so honestly.
    """
    x, y = _paired(a, b, "the sign-flip test")
    d = x - y
    observed = abs(d.mean())
    if d.size <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    else:
        if rng is None:
            raise ProbeError("sign_flip needs a random generator for more than 16 pairs")
        signs = rng.choice((1.0, -1.0), size=(int(n_perm), d.size))
    stats_ = np.abs((signs * d).mean(axis=1))
    p = float(np.mean(stats_ >= observed - 1e-12))
    return PairedTest(float(d.mean()), float(d.min()), float(d.max()), p, d.size, "sign-flip")


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (controls the family-wise error rate)."""
    p = np.asarray(pvalues, dtype=float)
    if p.size == 0:
        return p
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def tiers(names: Sequence[str], scores: Sequence[float],
          different: Callable[[str, str], bool]) -> list[list[str]]:
    """Rank models by score and cut the ranking into groups.

    The first group holds the best model and every model not significantly different from it;
    the next group starts at the best model left, and so on. A model in group 2 is thus
    significantly worse than the best model, while models in one group cannot be told apart.
    """
    order = [names[i] for i in np.argsort(-np.asarray(scores, dtype=float), kind="stable")]
    groups: list[list[str]] = []
    while order:
        head = order[0]
        group = [head] + [m for m in order[1:] if not different(head, m)]
        groups.append(group)
        order = [m for m in order if m not in group]
    return groups
