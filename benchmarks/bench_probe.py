"""Benchmark: the default probe run of one model on the four datasets, against a naive version.

Synthetic embeddings of the real sizes (HiCervix 28,160 / 4,018 / 8,051 rows with its 26 classes
and three levels; SIPaKMeD 4,049, MLCC 963 and BCFC 693 rows split 70/10/20), 1,024-d, built as
class means + isotropic noise + a strong low-rank nuisance + a common offset (as CLIP-style
embeddings have). Both versions run the same protocol side by side:

* linear probe, C chosen on validation over the default grid (ties by validation log-loss);
* cosine kNN, k chosen on validation from (1, 3, 5, 10, 20, 50);
* SimpleShot, 600 episodes for each of 1, 2, 4, 8, 16 shots (one seed), HiCervix per level.

The naive version is the protocol written the obvious way: a fresh ``LogisticRegression`` per
grid point (cold start; same tolerance and iteration cap so that both converge to the same
optimum), one scikit-learn ``KNeighborsClassifier`` per k, and a Python loop over episodes that
draws each support set with :func:`support_indices`, re-normalises the test split, and scores
with the scalar metric functions. Both read the features as float32, as stores hold them. The
script checks both choose the same C and k and give the same linear-probe test accuracy and
episode accuracies (to 2e-3: float32 rounding can flip a near-tie), then prints times and ratios.

Usage: ``python benchmarks/bench_probe.py [--quick] [--no-naive | --naive-linear-only]
[--datasets hicervix,sipakmed,mlcc,bcfc]`` (``--quick``: small sizes, 20 episodes;
``--naive-linear-only``: the naive reference for the linear probe alone, for HiCervix, whose
naive kNN and episode loop take over 15 minutes).
"""

from __future__ import annotations

import argparse
import os
import time
from types import SimpleNamespace

import numpy as np

SIZES = {"sipakmed": (4049, (813, 825, 793, 787, 831)), "mlcc": (963, (613, 163, 113, 74)),
         "bcfc": (693, (160, 533))}


def _hicervix_rows(scale: float, rng):
    """Labels, splits and levels of the real HiCervix CSVs (bundled), optionally subsampled."""
    from embedcyto.datasets.hicervix_labels import read_hicervix_labels

    ds = read_hicervix_labels()
    keep = ds.records
    if scale < 1:  # per (class, split): a share of the rows, but enough for 16 shots
        cells: dict = {}
        for r in ds.records:
            cells.setdefault((r.label, r.split), []).append(r)
        keep = [r for rows in cells.values()
                for r in rows[: max(int(scale * len(rows)), min(len(rows), 20))]]
    labels = np.array([r.label for r in keep])
    splits = np.array([r.split for r in keep])
    levels = np.array([r.levels for r in keep])
    meta = {"classes": ds.classes, "level_names": ds.level_names,
            "level_maps": {k: tuple(v) for k, v in ds.level_maps.items()},
            "label_spaces": {k: v.classes for k, v in ds.label_spaces.items()}}
    return labels, splits, levels, meta


def _stratified_split(labels, rng):
    splits = np.empty(labels.size, dtype=object)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_tr, n_va = int(round(0.7 * rows.size)), int(round(0.1 * rows.size))
        splits[rows[:n_tr]], splits[rows[n_tr:n_tr + n_va]], splits[rows[n_tr + n_va:]] = \
            "train", "val", "test"
    return splits.astype(str)


def make_features(name: str, dim: int, scale: float, seed: int = 0):
    """A Features-like object with synthetic embeddings of one dataset."""
    rng = np.random.default_rng(seed)
    if name == "hicervix":
        labels, splits, levels, meta = _hicervix_rows(scale, rng)
    else:
        counts = [max(int(c * scale), 25) for c in SIZES[name][1]]
        labels = np.repeat(np.arange(len(counts)), counts)
        splits, levels = _stratified_split(labels, rng), None
        meta = {"classes": tuple(f"class_{i}" for i in range(len(counts))), "level_names": (),
                "level_maps": {}, "label_spaces": {}}
    k = len(meta["classes"])
    # Class separation independent of the width: mean gaps of about 3 noise standard deviations.
    means = rng.normal(size=(k, dim)).astype(np.float32) * (2.2 / np.sqrt(dim))
    nuisance = rng.normal(size=(16, dim)).astype(np.float32) * 0.5
    offset = rng.normal(size=dim).astype(np.float32) * 2.0
    X = (means[labels] + rng.normal(size=(labels.size, dim)).astype(np.float32)
         + rng.normal(size=(labels.size, 16)).astype(np.float32) @ nuisance + offset)
    X = X.astype(np.float32)  # as stores hold them (the library reads them as float32)
    ids = np.array([f"{name}/{i:06d}.png" for i in range(labels.size)])
    return SimpleNamespace(X=X, labels=labels, ids=ids, splits=splits, levels=levels,
                           groups=np.full(labels.size, ""), hierarchy={}, provenance={}, **meta)


def run_fast(feats, shots, episodes):
    """The library path used by ``embedcyto probe`` (runner's per-unit evaluation)."""
    from embedcyto.probes.evaluate import evaluate_episodes, evaluate_full

    out = {"linear": evaluate_full(feats, "linear", None, {}),
           "knn": evaluate_full(feats, "knn", None, {})}
    for k in shots:
        out[k] = evaluate_episodes(feats, "simpleshot", k, 1, episodes, {})
    return out


def _split(feats, name):
    m = feats.splits == name
    return feats.X[m], feats.labels[m], feats.ids[m], (None if feats.levels is None
                                                        else feats.levels[m])


def naive_linear(feats):
    from sklearn.linear_model import LogisticRegression

    from embedcyto.probes.linear import DEFAULT_CS

    (Xtr, ytr, _, _), (Xva, yva, _, _), (Xte, yte, _, _) = (
        _split(feats, s) for s in ("train", "val", "test"))
    mu, sd = Xtr.mean(0), Xtr.std(0)
    best = None
    for c in DEFAULT_CS:
        model = LogisticRegression(C=c, max_iter=1000, tol=1e-6).fit((Xtr - mu) / sd, ytr)
        p = model.predict_proba((Xva - mu) / sd)
        score = (np.mean(p.argmax(1) == yva), np.mean(np.log(p[np.arange(yva.size), yva])))
        if best is None or score > best[0]:
            best, since = (score, c, model), 0
        else:
            since += 1
            if since >= 3:  # the same early stop as LinearProbe(patience=3)
                break
    return best[1], float(np.mean(best[2].predict((Xte - mu) / sd) == yte))


def naive_knn(feats):
    from sklearn.neighbors import KNeighborsClassifier

    (Xtr, ytr, _, _), (Xva, yva, _, _) = (_split(feats, s) for s in ("train", "val"))
    mu = Xtr.mean(0)

    def norm(a):
        a = a - mu
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    ks = [k for k in (1, 3, 5, 10, 20, 50) if k <= ytr.size]
    scores = [KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(norm(Xtr), ytr)
              .score(norm(Xva), yva) for k in ks]
    return ks[int(np.argmax(scores))]


def naive_episodes(feats, shots, episodes):
    from embedcyto.metrics import hierarchical_metrics
    from embedcyto.probes import support_indices

    (Xtr, ytr, ids, _), (Xte, yte, _, lte) = (_split(feats, s) for s in ("train", "test"))
    out = {}
    for k in shots:
        accs = []
        for e in range(episodes):
            idx = support_indices(ids, ytr, k, 1, e)
            mu = Xtr[idx].mean(0)  # the default centring: the episode's support mean
            s = (Xtr[idx] - mu) / np.linalg.norm(Xtr[idx] - mu, axis=1, keepdims=True)
            q = (Xte - mu) / np.linalg.norm(Xte - mu, axis=1, keepdims=True)
            protos = np.stack([s[ytr[idx] == c].mean(0) for c in range(len(feats.classes))])
            d = ((q[:, None, :] - protos[None]) ** 2).sum(-1) if q.shape[0] < 2000 else \
                (q ** 2).sum(1)[:, None] - 2 * q @ protos.T + (protos ** 2).sum(1)
            accs.append(np.mean(d.argmin(1) == yte))
            if lte is not None:
                p = np.exp(-(d - d.min(1, keepdims=True)) / 0.1)
                hierarchical_metrics(p / p.sum(1, keepdims=True), lte, feats.level_maps,
                                     feats.level_names)
        out[k] = np.array(accs)
    return out


def _compare_naive(feats, fast, t_fast, shots, episodes, linear_only: bool
                   ) -> tuple[float, bool]:
    """Run the naive version, print its times and whether it agrees; return (seconds, same).

    Agreement: the same C and k, test accuracy of the linear probe within 2e-3 (or one test row)
    and episode accuracies within 2e-3 (float32 rounding can flip a near-tie or two).
    """
    t0 = time.perf_counter()
    c, acc = naive_linear(feats)
    t_lin = time.perf_counter() - t0
    lin = fast["linear"]
    acc_diff = abs(acc - lin["metrics"]["accuracy"])
    same = c == lin["chosen"]["C"] and acc_diff <= max(2e-3, 1.01 / lin["n_test"])
    if linear_only:
        print(f"{'':<9} naive linear {t_lin:6.1f}s  ratio {t_lin / lin['seconds']:4.1f}x  "
              f"same C: {c == lin['chosen']['C']} (C={c:.3g})  test accuracy diff {acc_diff:.1e}",
              flush=True)
        return t_lin, same
    k = naive_knn(feats)
    t_knn = time.perf_counter() - t0 - t_lin
    eps = naive_episodes(feats, shots, episodes)
    t_naive = time.perf_counter() - t0
    diffs = max(np.max(np.abs(np.array(fast[s]["episode_accuracy"]) - eps[s])) for s in shots)
    same = same and k == fast["knn"]["chosen"]["k"] and diffs <= 2e-3
    print(f"{'':<9} naive {t_naive:6.1f}s (linear {t_lin:.1f}s, knn {t_knn:.1f}s, "
          f"episodes {t_naive - t_lin - t_knn:.1f}s)  ratio {t_naive / t_fast:4.1f}x "
          f"(linear {t_lin / lin['seconds']:.1f}x)  same C/k: {c == lin['chosen']['C']}/"
          f"{k == fast['knn']['chosen']['k']}  test accuracy diff {acc_diff:.1e}  "
          f"max episode diff {diffs:.1e}", flush=True)
    return t_naive, same


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 20 episodes")
    parser.add_argument("--no-naive", action="store_true", help="time the library path only")
    parser.add_argument("--naive-linear-only", action="store_true",
                        help="naive reference for the linear probe only (HiCervix's naive "
                             "episodes take over 15 minutes)")
    parser.add_argument("--datasets", default="hicervix,sipakmed,mlcc,bcfc",
                        help="comma-separated subset of the four datasets")
    args = parser.parse_args(argv)
    scale, episodes, dim = (0.05, 20, 64) if args.quick else (1.0, 600, 1024)
    shots = (1, 2, 4, 8, 16)
    print(f"cores: {os.cpu_count()}  dim: {dim}  episodes: {episodes}  shots: {shots}")
    total_fast = total_naive = total_compared = 0.0
    ok = True
    for name in args.datasets.split(","):
        feats = make_features(name, dim, scale)
        n = {s: int(np.sum(feats.splits == s)) for s in ("train", "val", "test")}
        t0 = time.perf_counter()
        fast = run_fast(feats, shots, episodes)
        t_fast = time.perf_counter() - t0
        total_fast += t_fast
        line = (f"{name:<9} train/val/test {n['train']}/{n['val']}/{n['test']}  "
                f"fast {t_fast:6.1f}s (linear {fast['linear']['seconds']:.1f}s, "
                f"knn {fast['knn']['seconds']:.1f}s, "
                f"episodes {sum(fast[k]['seconds'] for k in shots):.1f}s, "
                f"C={fast['linear']['chosen']['C']:.3g}, k={fast['knn']['chosen']['k']}, "
                f"acc {fast['linear']['metrics']['accuracy']:.3f})")
        print(line, flush=True)
        if not args.no_naive:
            t_naive, same = _compare_naive(feats, fast, t_fast, shots, episodes,
                                            args.naive_linear_only)
            total_naive += t_naive
            total_compared += t_fast if not args.naive_linear_only else fast["linear"]["seconds"]
            ok &= same
    what = "linear only" if args.naive_linear_only else "whole run"
    print(f"total fast {total_fast:.1f}s" + ("" if args.no_naive else
          f"  naive ({what}) {total_naive:.1f}s against {total_compared:.1f}s: ratio "
          f"{total_naive / total_compared:.1f}x  results identical: {ok}"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
