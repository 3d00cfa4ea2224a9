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

from embedcyto.errors import ProbeError
from embedcyto.metrics import classification_metrics, hierarchical_metrics, mean_ci
from embedcyto.predictions import PENDING

FULL_DATA_METHODS = ("linear", "knn", "study_head")
EPISODE_METHODS = ("simpleshot", "protonet")
METHODS = FULL_DATA_METHODS + EPISODE_METHODS
#: Methods whose result does not depend on the seed once a validation split exists.
DETERMINISTIC = ("linear", "knn")
NEEDS_VALIDATION = ("linear", "knn")


def split_arrays(features, split: str, need: bool = True) -> dict[str, Any]:
    """Rows of one split as plain arrays (features as float32)."""
    mask = np.asarray(features.splits) == split
    if need and not mask.any():
        raise ProbeError(f"the store has no {split!r} rows; re-split the dataset so that "
                         f"{split} is not empty, then extract again")
    out = {"X": np.asarray(features.X[mask], dtype=np.float32),
           "y": np.asarray(features.labels)[mask], "ids": np.asarray(features.ids)[mask]}
    out["levels"] = None if features.levels is None else np.asarray(features.levels)[mask]
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


def _make_estimator(method: str, seed: int | None, options: Mapping[str, Any]):
    from embedcyto.probes import KNNProbe, LinearProbe, StudyLinearHead

    if method == "linear":
        return LinearProbe(**options)
    if method == "knn":
        return KNNProbe(**options)
    return StudyLinearHead(random_state=seed, **options)


def evaluate_full(features, method: str, seed: int | None, options: Mapping[str, Any]) -> dict:
    """Fit one full-data probe on train (choosing its hyper-parameter on val) and score test."""
    start = time.perf_counter()
    train, test = split_arrays(features, "train"), split_arrays(features, "test")
    val = split_arrays(features, "val", need=method in NEEDS_VALIDATION)
    try:
        est = _make_estimator(method, seed, options)
    except TypeError as err:
        raise ProbeError(f"bad options for {method}: {err}") from err
    if method in NEEDS_VALIDATION:
        est.fit(train["X"], train["y"], val["X"], val["y"])
    else:
        est.fit(train["X"], train["y"])
    k = len(features.classes)
    proba = _full_proba(est.predict_proba(test["X"]), est.classes_, k)
    pred = np.argmax(proba, axis=1)
    row = {"metrics": classification_metrics(test["y"], pred, proba, k),
           "chosen": _chosen(est), "n_train": len(train["y"]), "n_val": len(val["y"]),
           "n_test": len(test["y"])}
    if _has_levels(features):
        row["levels"] = hierarchical_metrics(proba, test["levels"], features.level_maps,
                                             features.level_names, _level_sizes(features))
    row["seconds"] = round(time.perf_counter() - start, 3)
    row[PENDING] = _kept(features, test, proba, val, est)
    return row


def _kept(features, test: dict, proba: np.ndarray, val: dict, est) -> dict:
    """Test (and validation) predictions for :mod:`embedcyto.predictions` to write."""
    k = len(features.classes)
    kept = {"ids": test["ids"], "y_true": test["y"], "proba": proba, "classes": features.classes,
            "levels": test["levels"] if _has_levels(features) else None,
            "meta": {"level_names": list(features.level_names or ()),
                     "level_maps": {n: list(m) for n, m in (features.level_maps or {}).items()},
                     "level_classes": {n: list(features.label_spaces[n])
                                       for n in features.level_names or ()
                                       if n in features.label_spaces}}}
    if len(val["y"]):
        kept["val"] = (val["ids"], val["y"], _full_proba(est.predict_proba(val["X"]),
                                                          est.classes_, k))
    return kept


def _chosen(est) -> dict:
    if hasattr(est, "C_"):
        return {"C": est.C_, "selection": est.selection_,
                "val_accuracy": [None if np.isnan(v) else float(v) for v in est.val_scores_]}
    if hasattr(est, "k_"):
        return {"k": int(est.k_), "selection": est.selection_,
                "val_accuracy": [None if np.isnan(v) else float(v) for v in est.val_scores_]}
    return {"epochs": est.epochs, "steps": est.n_steps_}


def _summarise(values: np.ndarray, level: float) -> dict:
    mean, half = mean_ci(values, level)
    return {"mean": mean, "ci": half, "std": float(np.std(values, ddof=1)) if values.size > 1
            else 0.0}


def evaluate_episodes(features, method: str, shots: int, seed: int, n_episodes: int,
                      options: Mapping[str, Any], ci_level: float = 0.95) -> dict:
    """Run ``n_episodes`` episodes of one (shots, seed); summarise with t intervals."""
    from embedcyto.probes.episodes import run_episodes

    start = time.perf_counter()
    train, test = split_arrays(features, "train"), split_arrays(features, "test")
    levels = _has_levels(features)
    result = run_episodes(
        train["X"], train["y"], train["ids"], test["X"], test["y"], shots, n_episodes, seed,
        method, n_classes=len(features.classes), class_names=features.classes,
        ids_test=test["ids"], levels_test=test["levels"] if levels else None,
        level_maps=features.level_maps if levels else None,
        level_names=features.level_names if levels else (), **dict(options))
    summary = {m: _summarise(result[m], ci_level)
               for m in ("accuracy", "balanced_accuracy", "macro_f1")}
    row = {"metrics": {m: s["mean"] for m, s in summary.items()},
           "ci": {m: s["ci"] for m, s in summary.items()},
           "episode_std": {m: s["std"] for m, s in summary.items()},
           "ci_level": ci_level, "episodes": int(n_episodes),
           "episode_accuracy": [round(float(a), 6) for a in result["accuracy"]],
           "n_train": len(train["y"]), "n_test": len(test["y"])}
    if levels:
        row["levels"] = {name: {m: _summarise(v, ci_level) for m, v in per.items()}
                         for name, per in result["levels"].items()}
        row["levels"]["average"] = _summarise(result["level_average"], ci_level)
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def evaluate_unit(features, method: str, runs: Sequence[tuple[int | None, int | None]],
                  n_episodes: int, options: Mapping[str, Any]) -> list[dict]:
    """All requested (shots, seed) runs of one method on one feature set, in order."""
    if method not in METHODS:
        raise ProbeError(f"unknown probe method {method!r}; choose from {', '.join(METHODS)}")
    rows = []
    for shots, seed in runs:
        if method in EPISODE_METHODS:
            rows.append(evaluate_episodes(features, method, shots, seed, n_episodes, options))
        else:
            rows.append(evaluate_full(features, method, seed, options))
    return rows
