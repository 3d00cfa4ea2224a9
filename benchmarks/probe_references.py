"""Reference implementations that ``bench_probe.py`` times and checks the library against.

* :func:`sklearn_linear`: scikit-learn's ``LogisticRegression`` used well, on the *same protocol*
  as :class:`embedcyto.probes.LinearProbe`: the same standardisation (train mean and std, a
  constant feature's scale set to 1), the same 13-value C grid walked from strong to weak
  regularisation with warm starts (``warm_start=True``), the same tolerance (1e-6) and
  iteration cap, the same choice (validation accuracy, ties by validation log-loss) and the same
  early stop (3 grid values without improvement), under the same one-BLAS-thread limit.
* :func:`naive_knn` and :func:`naive_episodes`: the protocol written the obvious way (one
  scikit-learn ``KNeighborsClassifier`` per k; a Python loop over episodes that re-normalises
  the test split), for the small datasets (HiCervix's take over 15 minutes).
"""

from __future__ import annotations

import contextlib
import time
import warnings

import numpy as np


def split(feats, name):
    m = feats.splits == name
    return feats.X[m], feats.labels[m], feats.ids[m], (None if feats.levels is None
                                                        else feats.levels[m])


def _standardise(Xtr, *others):
    mu, sd = Xtr.mean(0), Xtr.std(0)
    sd[sd < 1e-12] = 1.0
    return [(X - mu) / sd for X in (Xtr, *others)]


def sklearn_linear(feats) -> dict:
    """The linear probe's protocol with scikit-learn's solver: chosen C, test accuracy, time.

    scikit-learn runs with one BLAS thread, its fastest setting on two cores: with two, its
    HiCervix path took 357 s against 198 s (L-BFGS-B's many small vector operations wait on
    spinning BLAS threads), while the linear probe splits its large products itself."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from embedcyto.probes._multinomial import single_blas_thread
    from embedcyto.probes.linear import DEFAULT_CS

    start, cpu = time.perf_counter(), time.process_time()
    (Xtr, ytr, _, _), (Xva, yva, _, _), (Xte, yte, _, _) = (
        split(feats, s) for s in ("train", "val", "test"))
    Xtr, Xva, Xte = _standardise(Xtr, Xva, Xte)
    model = LogisticRegression(max_iter=1000, tol=1e-6, warm_start=True)
    best, since, iters = None, 0, 0
    with single_blas_thread(), warnings.catch_warnings(), _count_evaluations() as evaluations:
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in DEFAULT_CS:
            model.set_params(C=c).fit(Xtr, ytr)
            iters += int(np.max(model.n_iter_))
            p = model.predict_proba(Xva)
            key = (np.mean(p.argmax(1) == yva),
                   np.mean(np.log(np.maximum(p[np.arange(yva.size), yva], 1e-300))))
            if best is None or key > best[0]:
                best, since = (key, c, model.coef_.copy(), model.intercept_.copy()), 0
            else:
                since += 1
                if since >= 3:
                    break
    _, c, coef, intercept = best
    scores = Xte @ coef.T + intercept
    pred = (scores[:, 0] > 0).astype(int) if scores.shape[1] == 1 else np.argmax(scores, axis=1)
    acc = float(np.mean(pred == yte))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu  # untimed below
    return {"C": c, "accuracy": acc, "iterations": iters, "evaluations": sum(evaluations),
            "seconds": seconds, "cpu_seconds": cpu_seconds,
            "converged_accuracy": _converged_accuracy(c, coef, intercept, Xtr, ytr, Xte, yte)}


def _converged_accuracy(c, coef, intercept, Xtr, ytr, Xte, yte) -> float | None:
    """Test accuracy of scikit-learn's fit at the chosen C carried on in float64 until its
    gradient test passes (tol 1e-6), from its float32 solution.

    On float32 features scikit-learn's L-BFGS-B stops when float32 can no longer resolve the
    loss decrease ("RELATIVE REDUCTION OF F"), before its gradient test: on the realistic
    HiCervix-sized features its C = 1 solution was 4 test rows away from the optimum's
    predictions (the float64 optimum, found by scikit-learn and by the linear probe alike).
    The linear probe's solution passes the gradient test, so identity is checked against this
    converged fit; it is not timed. None for binary problems (the float32 fit is kept).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from embedcyto.probes._multinomial import single_blas_thread

    if coef.shape[0] == 1:
        return None
    model = LogisticRegression(C=c, max_iter=5000, tol=1e-6, warm_start=True)
    model.coef_, model.intercept_ = coef.astype(np.float64), intercept.astype(np.float64)
    with single_blas_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(Xtr.astype(np.float64), ytr)
    return float(np.mean(model.predict(Xte.astype(np.float64)) == yte))


@contextlib.contextmanager
def _count_evaluations():
    """Collect the loss evaluations (``nfev``) of every ``scipy.optimize.minimize`` call made
    inside (scikit-learn looks the function up at call time, so wrapping it sees its fits)."""
    import scipy.optimize

    counts, minimize = [], scipy.optimize.minimize

    def counted(*args, **kwargs):
        result = minimize(*args, **kwargs)
        counts.append(int(result.nfev))
        return result
    scipy.optimize.minimize = counted
    try:
        yield counts
    finally:
        scipy.optimize.minimize = minimize


def naive_knn(feats) -> int:
    """k chosen by one scikit-learn brute-force kNN per k of the grid."""
    from sklearn.neighbors import KNeighborsClassifier

    (Xtr, ytr, _, _), (Xva, yva, _, _) = (split(feats, s) for s in ("train", "val"))
    mu = Xtr.mean(0)

    def norm(a):
        a = a - mu
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    ks = [k for k in (1, 3, 5, 10, 20, 50) if k <= ytr.size]
    scores = [KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(norm(Xtr), ytr)
              .score(norm(Xva), yva) for k in ks]
    return ks[int(np.argmax(scores))]


def naive_episodes(feats, shots, episodes) -> dict:
    """SimpleShot accuracy of every episode, one episode at a time (centred on the episode's
    support mean, embedcyto's default)."""
    from embedcyto.probes import support_indices

    (Xtr, ytr, ids, _), (Xte, yte, _, _) = (split(feats, s) for s in ("train", "test"))
    out = {}
    for k in shots:
        accs = []
        for e in range(episodes):
            idx = support_indices(ids, ytr, k, 1, e)
            mu = Xtr[idx].mean(0)
            s = (Xtr[idx] - mu) / np.linalg.norm(Xtr[idx] - mu, axis=1, keepdims=True)
            q = (Xte - mu) / np.linalg.norm(Xte - mu, axis=1, keepdims=True)
            protos = np.stack([s[ytr[idx] == c].mean(0) for c in range(len(feats.classes))])
            d = (q ** 2).sum(1)[:, None] - 2 * q @ protos.T + (protos ** 2).sum(1)
            accs.append(np.mean(d.argmin(1) == yte))
        out[k] = np.array(accs)
    return out
