"""Benchmark: the text-aware probes against SimpleShot on HiCervix-sized features, same episodes.

Synthetic embeddings of HiCervix's sizes (28,160 train / 4,018 val / 8,051 test rows, 1,024-d,
23 classes), built as a class's "text embedding" + noise + a common offset, with the class text
embeddings perturbed so zero-shot is imperfect. For each of 1, 2, 4, 8, 16 shots, the same
``--episodes`` support sets (drawn by :func:`embedcyto.datasets.sampling.support_batch`, as the
probe runner draws them) are scored by SimpleShot (:func:`embedcyto.probes.episodes.run_episodes`)
and by each text-aware method's batched scorer; zero-shot (no episodes) is scored once. Prints
the seconds per method, the ratio to SimpleShot's and the mean accuracy. The train x test
products every text method of one store shares (computed once per store and process) are timed
on their own line, before the methods.

Usage: ``python benchmarks/bench_text_probes.py [--episodes 600] [--scale 1.0]
[--methods textlinear,clap,tipadapter,tipadapter_f,lppp]`` (``--scale 0.1`` for a quick run).
This is a measurement, not a test: nothing fails on time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from embedcyto.datasets.sampling import support_batch
from embedcyto.probes.episodes import run_episodes
from embedcyto.probes.text_episodes import _prepared, text_scorer, zeroshot_logits

SHOTS = (1, 2, 4, 8, 16)


def make_features(scale: float, dim: int = 1024, classes: int = 23, seed: int = 0):
    rng = np.random.default_rng(seed)
    sizes = [max(int(n * scale), classes * 20) for n in (28160, 4018, 8051)]
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    offset = 2.0 * rng.standard_normal(dim).astype(np.float32)
    text = centres + 1.0 * rng.standard_normal((classes, dim)).astype(np.float32)
    out = []
    for n in sizes:
        y = rng.integers(0, classes, n)
        X = centres[y] + 12.0 * rng.standard_normal((n, dim)).astype(np.float32) + offset
        out.append((X.astype(np.float32), y))
    return out, text


def _episodes_text(method, train, test, val, text, shots, episodes, seed, batch):
    (X, y), (Xt, yt), (Xv, yv) = train, test, val
    ids = np.array([f"r{i}" for i in range(len(y))])
    idx = support_batch(ids, y, shots, seed, np.arange(episodes), n_classes=int(y.max()) + 1)
    score = text_scorer(method, X, Xt, text=text, logit_scale=100.0, X_val=Xv, y_val=yv)
    acc = []
    for start in range(0, episodes, batch):
        pred = score(idx[start:start + batch]).argmin(axis=2).T  # (n, E, C) -> (E, n)
        acc.extend((pred == yt).mean(axis=1).tolist())
    return float(np.mean(acc))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--methods", default="textlinear,clap,tipadapter,tipadapter_f,lppp")
    parser.add_argument("--batch", type=int, default=16, help="episodes per batch")
    args = parser.parse_args(argv)
    (train, val, test), text = make_features(args.scale)
    print(f"train {train[0].shape}, val {val[0].shape}, test {test[0].shape}, "
          f"{args.episodes} episodes x shots {SHOTS}")
    ids = np.array([f"r{i}" for i in range(len(train[1]))])
    times, accs = {}, {}
    t0 = time.perf_counter()
    ss = [run_episodes(train[0], train[1], ids, test[0], test[1], k, args.episodes, 0,
                       "simpleshot")["accuracy"].mean() for k in SHOTS]
    times["simpleshot"], accs["simpleshot"] = time.perf_counter() - t0, float(np.mean(ss))
    t0 = time.perf_counter()  # train x test products, shared by every method of one store
    _prepared(train[0], test[0], text, 100.0, val[0], val[1])
    times["(shared products)"], accs["(shared products)"] = time.perf_counter() - t0, float("nan")
    t0 = time.perf_counter()
    zs = (zeroshot_logits(test[0], text, 100.0).argmax(1) == test[1]).mean()
    times["zeroshot"], accs["zeroshot"] = time.perf_counter() - t0, float(zs)
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        a = [_episodes_text(method, train, test, val, text, k, args.episodes, 0, args.batch)
             for k in SHOTS]
        times[method], accs[method] = time.perf_counter() - t0, float(np.mean(a))
        print(f"  {method}: {times[method]:.1f} s", flush=True)
    base = times["simpleshot"]
    print(f"{'method':<18}{'seconds':>10}{'x SimpleShot':>14}{'mean acc':>10}")
    for method, sec in times.items():
        print(f"{method:<18}{sec:>10.1f}{sec / base:>14.2f}{accs[method]:>10.3f}")


if __name__ == "__main__":
    main()
