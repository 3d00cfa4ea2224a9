"""Evaluate one probe method on one feature set: full-data probes and few-shot episodes.

These functions take a ``Features``-like object (attributes ``X, labels, ids, splits, levels,
classes, label_spaces, level_names, level_maps``) and return JSON-ready result rows; they never
read files, so the runner can hand them to any joblib backend.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from embedcyto import study25
from embedcyto.errors import ProbeError
from embedcyto.metrics import classification_metrics, hierarchical_metrics, mean_ci
from embedcyto.predictions import PENDING
from embedcyto.probes import registry

#: No backbone produces embeddings this large (they are normally below 1e3); such values come
#: from a damaged store or a broken extraction, and a single one dominates every centring mean
#: and norm (kNN and SimpleShot then score chance), so the probe grid refuses them.
ABSURD = 1e15


def _bad_rows(X, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Row indices holding NaN/inf, and rows holding absurdly large values (chunked reads)."""
    bad, huge = [], []
    for start in range(0, X.shape[0], chunk):
        block = np.asarray(X[start:start + chunk])
        finite = np.isfinite(block)
        bad.append(start + np.flatnonzero(~finite.all(axis=1)))
        huge.append(start + np.flatnonzero((np.abs(np.where(finite, block, 0)) > ABSURD)
                                           .any(axis=1)))
    empty = np.empty(0, dtype=np.int64)
    return (np.concatenate(bad) if bad else empty), (np.concatenate(huge) if huge else empty)


def check_finite(X, ids, where: str) -> None:
    """Refuse features holding NaN, ±inf or absurd magnitudes, naming the rows.

    Works on memory-mapped stores (read in chunks).

    Raises:
        ProbeError: the message names up to five row ids, how many rows are affected, and the fix.
    """
    bad, huge = _bad_rows(X)
    for rows, what in ((bad, "NaN or infinite"), (huge, f"absurdly large (above {ABSURD:g})")):
        if rows.size:
            shown = ", ".join(str(i) for i in np.asarray(ids)[rows[:5]])
            raise ProbeError(
                f"{where}: {rows.size} row(s) hold {what} feature values ({shown}"
                f"{', ...' if rows.size > 5 else ''}); no probe can use them: re-extract the "
                "store (`embedcyto extract` with `force=True`) or leave those images out")


def split_arrays(features, split: str, need: bool = True,
                 cache: dict | None = None) -> dict[str, Any]:
    """Rows of one split as plain arrays (features as float32).

    ``cache`` (a dict shared by the runs of one unit) keeps each split's arrays once read and
    checked, so the fifteen (shots, seed) runs of an episodic method copy and check the
    training and test rows once, not fifteen times; the arrays are read-only there.

    Raises:
        ProbeError: the split is empty (when needed) or holds non-finite or absurd features.
    """
    if cache is not None and split in cache:
        out = cache[split]
        if need and not out["y"].size:
            raise ProbeError(f"the store has no {split!r} rows; re-split the dataset so that "
                             f"{split} is not empty, then extract again")
        return out
    mask = np.asarray(features.splits) == split
    if need and not mask.any():
        raise ProbeError(f"the store has no {split!r} rows; re-split the dataset so that "
                         f"{split} is not empty, then extract again")
    out = {"X": np.asarray(features.X[mask], dtype=np.float32),
           "y": np.asarray(features.labels)[mask], "ids": np.asarray(features.ids)[mask]}
    check_finite(out["X"], out["ids"], f"{split} split")
    out["levels"] = None if features.levels is None else np.asarray(features.levels)[mask]
    if cache is not None:
        for value in out.values():
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
        cache[split] = out
    return out


def _has_levels(features) -> bool:
    return features.levels is not None and len(features.level_names) > 0


def _level_sizes(features) -> dict[str, int]:
    return {name: len(features.label_spaces[name]) for name in features.level_names
            if name in features.label_spaces}


def _full_proba(proba: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over the whole label space (zero for classes absent from training)."""
    out = np.zeros((proba.shape[0], n_classes))
    out[:, np.asarray(classes, dtype=np.int64)] = proba
    return out


def _make_estimator(spec: registry.ProbeMethod, seed: int | None, options: Mapping[str, Any]):
    kwargs = {**dict(options), **({"random_state": seed} if spec.seeded else {})}
    try:
        return spec.estimator_class()(**kwargs)
    except TypeError as err:
        raise ProbeError(f"bad options for {spec.name}: {err}") from err


def evaluate_full(features, method: str, seed: int | None, options: Mapping[str, Any],
                  cache: dict | None = None) -> dict:
    """Fit one full-data probe on train (choosing its hyper-parameter on val) and score test."""
    start = time.perf_counter()
    spec = registry.get_method(method)
    train, test = split_arrays(features, "train", cache=cache), \
        split_arrays(features, "test", cache=cache)
    val = split_arrays(features, "val", need=spec.needs_validation, cache=cache)
    est = _make_estimator(spec, seed, options)
    if spec.needs_validation:
        est.fit(train["X"], train["y"], val["X"], val["y"])
    else:
        est.fit(train["X"], train["y"])
    k = len(features.classes)
    proba = _full_proba(est.predict_proba(test["X"]), est.classes_, k)
    pred = np.argmax(proba, axis=1)
    row = {"metrics": classification_metrics(test["y"], pred, proba, k),
           "chosen": _chosen(spec, est), "n_train": len(train["y"]), "n_val": len(val["y"]),
           "n_test": len(test["y"])}
    val_proba = None
    if len(val["y"]):  # the kept model on validation: the split the study's Table 1 reports
        val_proba = _full_proba(est.predict_proba(val["X"]), est.classes_, k)
        row["val_metrics"] = classification_metrics(val["y"], np.argmax(val_proba, axis=1),
                                                    val_proba, k)
    if _has_levels(features):
        row["levels"] = hierarchical_metrics(proba, test["levels"], features.level_maps,
                                             features.level_names, _level_sizes(features))
        if study25.has_study25(features.label_spaces, features.level_maps,
                               features.level_names):  # the paper's HiCervix number
            row[study25.RESULT_KEY] = study25.study25_metrics(
                proba, test["levels"], features.level_names, features.level_maps,
                features.label_spaces)
    row["seconds"] = round(time.perf_counter() - start, 3)
    row[PENDING] = _kept(features, test, proba, val, val_proba)
    return row


def _kept(features, test: dict, proba: np.ndarray, val: dict, val_proba) -> dict:
    """Test (and validation) predictions for :mod:`embedcyto.predictions` to write."""
    kept = {"ids": test["ids"], "y_true": test["y"], "proba": proba, "classes": features.classes,
            "levels": test["levels"] if _has_levels(features) else None,
            "meta": {"level_names": list(features.level_names or ()),
                     "level_maps": {n: list(m) for n, m in (features.level_maps or {}).items()},
                     "level_classes": {n: list(features.label_spaces[n])
                                       for n in features.level_names or ()
                                       if n in features.label_spaces}}}
    if val_proba is not None:
        kept["val"] = (val["ids"], val["y"], val_proba)
    return kept


def _json_value(value: Any) -> Any:
    """An estimator attribute as JSON (arrays as lists, NaN as null)."""
    value = value.tolist() if isinstance(value, np.ndarray) else value
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    return value.item() if isinstance(value, np.generic) else value


def _chosen(spec: registry.ProbeMethod, est) -> dict:
    """What the fit selected, as the registry row names it."""
    return {key: _json_value(getattr(est, attr)) for key, attr in spec.chosen
            if hasattr(est, attr)}


def _summarise(values: np.ndarray, level: float) -> dict:
    mean, half = mean_ci(values, level)
    return {"mean": mean, "ci": half, "std": float(np.std(values, ddof=1)) if values.size > 1
            else 0.0}


def evaluate_episodes(features, method: str, shots: int, seed: int, n_episodes: int,
                      options: Mapping[str, Any], ci_level: float = 0.95,
                      cache: dict | None = None) -> dict:
    """Run ``n_episodes`` episodes of one (shots, seed); summarise with t intervals."""
    return evaluate_episode_runs(features, method, [(shots, seed)], n_episodes, options,
                                 ci_level, cache)[0]


def evaluate_episode_runs(features, method: str, runs: Sequence[tuple[int, int]],
                          n_episodes: int, options: Mapping[str, Any], ci_level: float = 0.95,
                          cache: dict | None = None) -> list[dict]:
    """Every (shots, seed) run of one episodic method, scored together
    (:func:`~embedcyto.probes.episodes.run_episode_runs`: one Gram matrix of training rows and
    queries serves all the runs where that is cheaper); one row per run, in order, each
    summarised with t intervals. A row's ``seconds`` is its share of the runs' time."""
    from embedcyto.probes.episodes import run_episode_runs

    start = time.perf_counter()
    train, test = split_arrays(features, "train", cache=cache), \
        split_arrays(features, "test", cache=cache)
    levels = _has_levels(features)
    results = run_episode_runs(
        train["X"], train["y"], train["ids"], test["X"], test["y"], list(runs), n_episodes,
        method, n_classes=len(features.classes), class_names=features.classes,
        ids_test=test["ids"], levels_test=test["levels"] if levels else None,
        level_maps=features.level_maps if levels else None,
        level_names=features.level_names if levels else (), **dict(options))
    seconds = round((time.perf_counter() - start) / max(1, len(results)), 3)
    return [_episode_row(result, n_episodes, ci_level, len(train["y"]), len(test["y"]), seconds)
            for result in results]


def _episode_row(result: dict, n_episodes: int, ci_level: float, n_train: int, n_test: int,
                 seconds: float) -> dict:
    summary = {m: _summarise(result[m], ci_level)
               for m in registry.HEADLINE_METRICS}
    row = {"metrics": {m: s["mean"] for m, s in summary.items()},
           "ci": {m: s["ci"] for m, s in summary.items()},
           "episode_std": {m: s["std"] for m, s in summary.items()},
           "ci_level": ci_level, "episodes": int(n_episodes),
           "episode_accuracy": [round(float(a), 6) for a in result["accuracy"]],
           "n_train": n_train, "n_test": n_test}
    if "levels" in result:
        row["levels"] = {name: {m: _summarise(v, ci_level) for m, v in per.items()}
                         for name, per in result["levels"].items()}
        row["levels"]["average"] = _summarise(result["level_average"], ci_level)
    row["seconds"] = seconds
    return row


def evaluate_unit(features, method: str, runs: Sequence[tuple[int | None, int | None]],
                  n_episodes: int, options: Mapping[str, Any]) -> list[dict]:
    """All requested (shots, seed) runs of one method on one feature set, in order."""
    spec = registry.get_method(method)
    if spec.text:
        from embedcyto.probes.text_inputs import method_options, text_inputs

        options = {**method_options(options),
                   **text_inputs(features, with_val=spec.needs_validation and spec.episodic)}
    cache: dict = {}
    if spec.episodic:
        return evaluate_episode_runs(features, method, runs, n_episodes, options, cache=cache)
    return [evaluate_full(features, method, seed, options, cache=cache) for _, seed in runs]
