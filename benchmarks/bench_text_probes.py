"""Benchmark: the text-aware probes against SimpleShot on HiCervix-sized features, same episodes.

Synthetic embeddings of HiCervix's sizes (28,160 train / 4,018 val / 8,051 test rows, 1,024-d,
23 classes), built as a class's "text embedding" + noise + a common offset, with the class text
embeddings perturbed so zero-shot is imperfect. For each of 1, 2, 4, 8, 16 shots, the same
``--episodes`` support sets are scored by SimpleShot and by each text-aware method, every one
through :func:`embedcyto.probes.episodes.run_episodes` as ``embedcyto probe`` runs them (same
support sets, same batch budget, same metrics); zero-shot (no episodes) is scored once. Prints
the wall-clock seconds per method, the ratio to SimpleShot's, the CPU seconds of the process
(all threads; on a shared machine the steadier figure) and the mean accuracy. The train x test
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

from embedcyto.probes.episodes import run_episodes
from embedcyto.probes.text_episodes import _prepared, zeroshot_logits

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


def _accuracy(method, train, test, val, text, episodes) -> float:
    """Mean accuracy over every shot value's ``episodes`` episodes (seed 0)."""
    (X, y), (Xt, yt) = train, test
    ids = np.array([f"r{i}" for i in range(len(y))])
    options = {} if method == "simpleshot" else {
        "text": text, "logit_scale": 100.0, "X_val": val[0], "y_val": val[1]}
    return float(np.mean([run_episodes(X, y, ids, Xt, yt, k, episodes, 0, method, **options)
                          ["accuracy"].mean() for k in SHOTS]))


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--methods", default="textlinear,clap,tipadapter,tipadapter_f,lppp")
    args = parser.parse_args(argv)
    (train, val, test), text = make_features(args.scale)
    print(f"train {train[0].shape}, val {val[0].shape}, test {test[0].shape}, "
          f"{args.episodes} episodes x shots {SHOTS}")
    # warm-up (imports, first-call set-up) on a few rows, so that no method's time carries it
    (X, y), (Xt, yt) = train, test
    run_episodes(X[:2000], y[:2000], np.arange(2000).astype(str), Xt[:500], yt[:500], 1, 1, 0)
    rows = {}
    rows["simpleshot"] = _timed(lambda: _accuracy("simpleshot", train, test, val, text,
                                                  args.episodes))
    # train x test products, shared by every method of one store
    _, wall, cpu = _timed(lambda: _prepared(train[0], test[0], text, 100.0, val[0], val[1]))
    rows["(shared products)"] = (float("nan"), wall, cpu)
    rows["zeroshot"] = _timed(lambda: float(
        (zeroshot_logits(test[0], text, 100.0).argmax(1) == test[1]).mean()))
    for method in args.methods.split(","):
        rows[method] = _timed(lambda: _accuracy(method, train, test, val, text, args.episodes))
        print(f"  {method}: {rows[method][1]:.1f} s", flush=True)
    base, base_cpu = rows["simpleshot"][1], rows["simpleshot"][2]
    print(f"{'method':<18}{'seconds':>9}{'x SimpleShot':>14}{'CPU s':>8}{'x (CPU)':>9}"
          f"{'mean acc':>10}")
    for method, (acc, wall, cpu) in rows.items():
        print(f"{method:<18}{wall:>9.1f}{wall / base:>14.2f}{cpu:>8.1f}{cpu / base_cpu:>9.2f}"
              f"{acc:>10.3f}")


if __name__ == "__main__":
    main()
