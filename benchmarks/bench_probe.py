"""Benchmark: the default probe run of one model on the four datasets, stage by stage.

Synthetic 1,024-d float32 embeddings of the real sizes (``probe_features.py``: class overlap,
sub-modes, a decaying noise spectrum, per-class noise scales), run through the library path of
``embedcyto probe`` (``evaluate_full`` / ``evaluate_episode_runs``):

* linear probe, C chosen on validation over the default grid (ties by validation log-loss);
* cosine kNN, k chosen on validation from (1, 3, 5, 10, 20, 50);
* SimpleShot, 600 episodes for each of 1, 2, 4, 8, 16 shots (one seed), HiCervix per level.

Printed per dataset and stage: the time, a lower bound from the stage's arithmetic (its matrix
products' FLOPs divided by this machine's fp32 matrix-product rate, measured first and printed),
and the ratio. The linear probe's FLOPs are those of the loss evaluations it made (4·n·p·K each),
so its ratio says how close each evaluation runs to the machine's rate; the evaluation count is
printed beside it. Next to the linear probe, scikit-learn's ``LogisticRegression`` runs the same
protocol (``probe_references.sklearn_linear``: same standardisation, grid, warm starts,
tolerance, early stop); the ratio of the two times (wall and CPU: on a shared machine the CPU
ratio is the steadier one) is printed with both evaluation counts, chosen C and test accuracies.
Identity there: the same C, and the test accuracy (within one row) of scikit-learn's chosen fit
carried on in float64 until its gradient test passes (untimed): its float32 fits stop when
float32 no longer resolves the loss decrease, short of the optimum the linear probe reaches.

Identity with an earlier version: ``--save-reference FILE`` writes the chosen C and k, the linear
probe's test accuracy and every episode's accuracy; ``--reference FILE`` checks a run against
it (same C and k, episode accuracies equal to float32 rounding: at most ``1/n_test`` apart, a
near-tie flipped) and exits 1 otherwise. ``--naive`` also checks k and the episode accuracies
against the naive loops (small datasets only: HiCervix's take over 15 minutes).

Scaling: ``--scale 2`` (or 4) repeats HiCervix's rows; the time per row and the peak resident
memory are printed (run each scale in its own process for an honest peak).

Usage: ``python benchmarks/bench_probe.py [--quick] [--datasets hicervix,sipakmed,mlcc,bcfc]
[--scale S] [--no-sklearn] [--episode-path auto|gram|dense] [--naive]
[--save-reference F | --reference F]``
(``--quick``: small sizes, 64-d, 20 episodes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np
from probe_features import DATASETS, SEPARATION, make_features
from probe_references import naive_episodes, naive_knn, sklearn_linear

SHOTS = (1, 2, 4, 8, 16)


def matmul_rate(seconds: float = 0.5) -> float:
    """This machine's fp32 matrix-product rate (FLOP/s) through torch, at its default threads."""
    import torch

    a, b = torch.randn(2048, 1024), torch.randn(1024, 2048)
    a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return n * 2 * 2048 * 1024 * 2048 / (time.perf_counter() - start)


class _EvalCounter:
    """Counts the linear probe's loss evaluations (wraps ``LinearProbe.fit``)."""

    def __init__(self):
        from embedcyto.probes.linear import LinearProbe

        self.last = None
        fit = LinearProbe.fit

        def counted(est, *args, **kwargs):
            out = fit(est, *args, **kwargs)
            self.last = getattr(est, "n_evaluations_", None)
            return out
        LinearProbe.fit = counted


STAGES = ("linear", "knn", "episodes")


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: ``/proc/self/clear_refs``); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_fast(feats, shots, episodes, counter, stages=STAGES, path="auto") -> dict:
    """The library path used by ``embedcyto probe`` (the runner's per-unit evaluation: the
    episodes of one unit share their split arrays through one cache, as in the runner).

    Each stage's peak resident memory is recorded (``peak_mib``; the features themselves
    included) when the peak can be reset between stages."""
    from embedcyto.probes.evaluate import evaluate_episode_runs, evaluate_full

    out, cache = {}, {}
    if "linear" in stages:
        reset_peak_rss()
        cpu = time.process_time()
        out["linear"] = evaluate_full(feats, "linear", None, {})
        out["linear"]["cpu_seconds"] = time.process_time() - cpu
        out["linear"]["evaluations"] = counter.last
        out["linear"]["peak_mib"] = peak_rss_mib()
    if "knn" in stages:
        reset_peak_rss()
        out["knn"] = evaluate_full(feats, "knn", None, {})
        out["knn"]["peak_mib"] = peak_rss_mib()
    if "episodes" in stages:
        reset_peak_rss()
        options = {} if path == "auto" else {"path": path}
        rows = evaluate_episode_runs(feats, "simpleshot", [(k, 1) for k in shots], episodes,
                                     options, cache=cache)  # the runs of one unit, together
        out.update(zip(shots, rows))
        out["episodes_peak_mib"] = peak_rss_mib()
    return out


def stage_flops(feats, fast, shots, episodes, path="auto") -> dict:
    """Matrix-product FLOPs of each stage that ran.

    kNN: one similarity product of the validation rows (choosing k) and one of the test rows
    against the training rows. Episodes, per run on the dense path: per episode, the test rows
    against every class prototype (``2·n_test·C·p``) and against the episode's centring mean
    (``2·n_test·p``); for the runs on the Gram path (``episode_gram.gram_plan``): the Gram
    matrix of training and test rows once (``2·n_train·n_test·p``) and each episode's centring
    mean (``2·n_test·p``). The Gram path's gathers are not matrix products and are left out of
    the bound (its ratio includes them)."""
    from embedcyto.probes.episode_gram import gram_plan

    n = {s: int(np.sum(feats.splits == s)) for s in ("train", "val", "test")}
    p, k = feats.X.shape[1], len(feats.classes)
    gram = {"auto": gram_plan(shots, episodes, k, n["train"], p), "gram": [True] * len(shots),
            "dense": [False] * len(shots)}[path]
    dense_runs = sum(1 for g in gram if not g)
    out = {"knn": 2.0 * (n["val"] + n["test"]) * n["train"] * p,
           "episodes": 2.0 * n["test"] * p * (dense_runs * episodes * (k + 1)
                                              + (len(shots) - dense_runs) * episodes
                                              + (n["train"] if any(gram) else 0))}
    if "linear" not in fast:
        return out
    evals = fast["linear"]["evaluations"]
    p_fit = min(p, n["train"])  # the solver fits in the row space when rows < features
    reached = sum(v is not None for v in fast["linear"]["chosen"]["val_accuracy"])
    linear = None if not evals else (  # binary: scikit-learn itself, no count
        4.0 * evals * n["train"] * p_fit * k + 2.0 * p * k * (reached * n["val"] + n["test"]))
    return {**out, "linear": linear}


def _stage_line(name, seconds, flops, rate) -> str:
    if flops is None:
        return f"{name} {seconds:.2f}s"
    bound = flops / rate
    return f"{name} {seconds:.2f}s (bound {bound:.2f}s, x{seconds / bound:.1f})"


def report(name, feats, fast, shots, episodes, rate, path="auto") -> float:
    """Print one dataset's stages; return its total seconds."""
    n = {s: int(np.sum(feats.splits == s)) for s in ("train", "val", "test")}
    flops = stage_flops(feats, fast, shots, episodes, path)
    t = {s: fast[s]["seconds"] for s in ("linear", "knn") if s in fast}
    if shots[0] in fast:
        t["episodes"] = sum(fast[k]["seconds"] for k in shots)
    chosen = ""
    if "linear" in fast:
        lin = fast["linear"]
        chosen = (f"C={lin['chosen']['C']:.3g} ({lin['evaluations']} evaluations) acc "
                  f"{lin['metrics']['accuracy']:.4f} balanced "
                  f"{lin['metrics']['balanced_accuracy']:.4f} ")
    if "knn" in fast:
        chosen += f"k={fast['knn']['chosen']['k']}"
    print(f"{name:<9} {n['train']}/{n['val']}/{n['test']} rows  total {sum(t.values()):.1f}s  "
          + "  ".join(_stage_line(s, t[s], flops[s], rate) for s in t) + f"  | {chosen}",
          flush=True)
    return sum(t.values())


def report_scaling(feats, fast, shots) -> None:
    """Per stage: microseconds per row (all rows of the dataset) and peak resident memory."""
    rows = feats.labels.size
    peaks = {"linear": fast.get("linear", {}).get("peak_mib"),
             "knn": fast.get("knn", {}).get("peak_mib"), "episodes": fast.get("episodes_peak_mib")}
    t = {s: fast[s]["seconds"] for s in ("linear", "knn") if s in fast}
    if shots[0] in fast:
        t["episodes"] = sum(fast[k]["seconds"] for k in shots)
    print(f"{'':<9} per row ({rows} rows, features {feats.X.nbytes / 2**20:.0f} MiB): "
          + "  ".join(f"{s} {1e6 * v / rows:.0f} us/row, peak RSS {peaks[s]:.0f} MiB"
                      for s, v in t.items()), flush=True)


def reference_of(fast, shots) -> dict:
    """What must not change: chosen C and k, linear and kNN test accuracy, every episode's
    accuracy, and each level's episode summaries (HiCervix)."""
    out = {}
    if "linear" in fast:
        out.update(C=fast["linear"]["chosen"]["C"], accuracy=fast["linear"]["metrics"]["accuracy"])
    if "knn" in fast:
        out.update(k=fast["knn"]["chosen"]["k"], knn_accuracy=fast["knn"]["metrics"]["accuracy"])
    if shots[0] in fast:
        out["episodes"] = {str(s): fast[s]["episode_accuracy"] for s in shots}
        out["levels"] = {str(s): {name: [v.get("accuracy", v)[key] for key in ("mean", "std")]
                                  for name, v in fast[s].get("levels", {}).items()}
                         for s in shots}  # "average" is a summary itself
    return out


def compare_reference(name, ref, fast, shots) -> bool:
    """Same C and k; every episode accuracy within 1/n_test (float32 rounding of a near-tie);
    the level summaries and the number of changed episodes are printed (0 expected)."""
    now, same, parts = reference_of(fast, shots), True, []
    for key in ("C", "k", "accuracy", "knn_accuracy"):
        if key in now and key in ref:
            same &= now[key] == ref[key]
            parts.append(f"{key} {ref[key]:.4g} -> {now[key]:.4g}")
    if "episodes" in now and "episodes" in ref:
        tol = 1.0 / fast[shots[0]]["n_test"] + 1e-6
        diffs = [np.abs(np.array(now["episodes"][str(s)]) - np.array(ref["episodes"][str(s)]))
                 for s in shots]
        worst = max(float(d.max()) for d in diffs)
        changed = sum(int((d > 1e-6).sum()) for d in diffs)
        levels_same = now["levels"] == ref.get("levels", now["levels"])
        same &= worst <= tol
        parts.append(f"episodes changed {changed}/{sum(d.size for d in diffs)} (max diff "
                     f"{worst:.1e}, allowed {tol:.1e}), level summaries identical {levels_same}")
    print(f"{'':<9} reference: {', '.join(parts)}: {'identical' if same else 'DIFFERENT'}",
          flush=True)
    return same


def compare_sklearn(feats, fast) -> tuple[float, bool]:
    """scikit-learn on the same protocol, timed; identity: the same C, and the same test
    accuracy (within one row) as scikit-learn's fit at that C once converged (see
    ``probe_references._converged_accuracy``)."""
    sk, lin = sklearn_linear(feats), fast["linear"]
    acc = lin["metrics"]["accuracy"]
    target = sk["accuracy"] if sk["converged_accuracy"] is None else sk["converged_accuracy"]
    same = sk["C"] == lin["chosen"]["C"] and abs(target - acc) <= 1.01 / lin["n_test"]
    converged = ("" if sk["converged_accuracy"] is None
                 else f" (converged in float64: {sk['converged_accuracy']:.4f})")
    print(f"{'':<9} scikit-learn same protocol (one BLAS thread, its fastest): "
          f"{sk['seconds']:.1f}s ({sk['iterations']} "
          f"iterations, {sk['evaluations']} evaluations), linear probe {lin['seconds']:.1f}s "
          f"({lin['evaluations']} evaluations): ratio "
          f"{sk['seconds'] / lin['seconds']:.1f}x (CPU {sk['cpu_seconds']:.1f}s against "
          f"{lin['cpu_seconds']:.1f}s: {sk['cpu_seconds'] / lin['cpu_seconds']:.1f}x)  "
          f"C {sk['C']:.3g} vs {lin['chosen']['C']:.3g}, "
          f"test accuracy {sk['accuracy']:.4f}{converged} vs {acc:.4f}: "
          f"{'same' if same else 'DIFFERENT'}", flush=True)
    return sk["seconds"], same


def compare_naive(feats, fast, shots, episodes) -> bool:
    k = naive_knn(feats)
    eps = naive_episodes(feats, shots, episodes)
    diff = max(np.max(np.abs(np.array(fast[s]["episode_accuracy"]) - eps[s])) for s in shots)
    same = k == fast["knn"]["chosen"]["k"] and diff <= 1.0 / fast[shots[0]]["n_test"] + 1e-6
    print(f"{'':<9} naive kNN k={k}, naive episodes max diff {diff:.1e}: "
          f"{'same' if same else 'DIFFERENT'}", flush=True)
    return same


def _args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 64-d, 20 episodes")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--scale", type=float, default=None,
                        help="rows relative to the real sizes (2, 4: HiCervix repeated)")
    parser.add_argument("--episodes", type=int, default=None)
    parser.add_argument("--separation", type=float, default=SEPARATION,
                        help="class-mean separation of the synthetic features (lower: harder; "
                        f"default {SEPARATION}: realistic overlap)")
    parser.add_argument("--no-sklearn", action="store_true",
                        help="skip scikit-learn's run of the linear protocol")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="stages to run (e.g. knn,episodes: the scaling runs without the "
                             "linear probe)")
    parser.add_argument("--episode-path", choices=("auto", "gram", "dense"), default="auto",
                        help="how the episodes' distances are computed (default: by cost, as "
                             "embedcyto probe does)")
    parser.add_argument("--naive", action="store_true", help="check k and episodes naively")
    parser.add_argument("--save-reference", metavar="FILE")
    parser.add_argument("--reference", metavar="FILE")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _args(argv)
    scale, episodes, dim = (0.05, 20, 64) if args.quick else (1.0, 600, 1024)
    scale = args.scale or scale
    episodes = args.episodes or episodes
    rate = matmul_rate()
    load = os.getloadavg()
    print(f"cores: {os.cpu_count()}  load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}  "
          f"fp32 matmul: {rate / 1e9:.0f} GFLOP/s  dim: {dim}  episodes: {episodes}  "
          f"shots: {SHOTS}  scale: {scale}", flush=True)
    counter, saved, stage_peaks = _EvalCounter(), {}, []
    ref = json.load(open(args.reference)) if args.reference else None
    total = sk_total = lin_total = 0.0
    rows, ok = 0, True
    stages = tuple(s for s in args.stages.split(",") if s)
    if not stages or set(stages) - set(STAGES):
        raise SystemExit(f"--stages: choose among {','.join(STAGES)}")
    if "linear" not in stages:
        args.no_sklearn = True
    for name in args.datasets.split(","):
        feats = make_features(name, dim, scale, separation=args.separation)
        fast = run_fast(feats, SHOTS, episodes, counter, stages, args.episode_path)
        total += report(name, feats, fast, SHOTS, episodes, rate, args.episode_path)
        if args.scale is not None:  # a scaling run: per-row figures
            report_scaling(feats, fast, SHOTS)
        rows += feats.labels.size
        stage_peaks += [fast.get(s, {}).get("peak_mib") for s in ("linear", "knn")]
        stage_peaks.append(fast.get("episodes_peak_mib"))
        saved[name] = reference_of(fast, SHOTS)
        if ref is not None:
            ok &= compare_reference(name, ref[name], fast, SHOTS)
        if not args.no_sklearn:
            t_sk, same = compare_sklearn(feats, fast)
            sk_total, lin_total, ok = sk_total + t_sk, lin_total + fast["linear"]["seconds"], \
                ok and same
        if args.naive:
            ok &= compare_naive(feats, fast, SHOTS, episodes)
    if args.save_reference:
        with open(args.save_reference, "w", encoding="utf-8") as handle:
            json.dump(saved, handle)
    # Each stage's window resets the peak (reset_peak_rss): the run's peak is the largest seen.
    peak = max([peak_rss_mib()] + [p for p in stage_peaks if p is not None])
    load = os.getloadavg()
    print(f"total {total:.1f}s for {rows} rows ({1e6 * total / rows:.0f} us/row)  peak RSS "
          f"{peak:.0f} MiB  load average {load[0]:.2f}"
          + ("" if args.no_sklearn else f"  linear vs scikit-learn: {lin_total:.1f}s against "
             f"{sk_total:.1f}s, ratio {sk_total / lin_total:.1f}x")
          + ("" if ref is None and args.no_sklearn and not args.naive
             else f"  results identical: {ok}"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
