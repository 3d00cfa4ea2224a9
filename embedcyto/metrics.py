"""Classification metrics as pure functions: arrays in, numbers out.

Every function takes integer label arrays (and, where needed, class probabilities) and returns
plain floats or NumPy arrays, so the same code scores a linear probe, a kNN vote, a few-shot
episode or a LoRA model. Nothing here reads files, draws random numbers or knows a dataset.

Conventions:
    * Labels are integers in ``[0, n_classes)``. ``n_classes`` is passed explicitly where a class
      may be missing from both ``y_true`` and ``y_pred`` (small test sets, few-shot episodes), so
      per-class arrays always have one entry per class of the label space.
    * Balanced accuracy and macro-F1 average over the classes *present in* ``y_true`` only: a class
      with no test image has no recall to average (scikit-learn does the same for balanced
      accuracy; for macro-F1 scikit-learn would count a predicted-but-absent class as F1 = 0, we
      leave it out so that a class missing from a small test split does not drag the mean down).
    * Percentages are never used inside the library: accuracy 0.9208 is reported as 0.9208. The
      :data:`HIERSWIN` reference is the one exception, quoted in percent as published.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from embedcyto.errors import ProbeError

#: HierSwin (Swin-L, 384 px) on the official HiCervix test subsets, in percent, as published
#: by Cai et al. (IEEE TMI 2024). Quoted beside embedcyto's per-level accuracies in reports.
HIERSWIN = {"level_1": 92.08, "level_2": 78.36, "level_3": 78.35, "average": 82.93}


def _labels(y, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ProbeError(f"{name} must be a 1-D array of integer labels, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ProbeError(f"{name} must hold integer labels, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    yt, yp = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if yt.shape != yp.shape:
        raise ProbeError(f"y_true and y_pred differ in length ({yt.size} vs {yp.size})")
    if yt.size == 0:
        raise ProbeError("cannot score an empty set of predictions: the evaluation split is empty")
    return yt, yp


def _n_classes(n_classes: int | None, *arrays: np.ndarray) -> int:
    seen = max(int(a.max()) + 1 for a in arrays if a.size)
    if n_classes is None:
        return seen
    if seen > n_classes or min(int(a.min()) for a in arrays if a.size) < 0:
        raise ProbeError(f"labels fall outside [0, {n_classes}): check the label space")
    return int(n_classes)


def confusion_matrix(y_true, y_pred, n_classes: int | None = None) -> np.ndarray:
    """Counts ``[true, predicted]`` as an ``(n_classes, n_classes)`` int64 array."""
    yt, yp = _pair(y_true, y_pred)
    k = _n_classes(n_classes, yt, yp)
    return np.bincount(yt * k + yp, minlength=k * k).reshape(k, k)


def accuracy(y_true, y_pred) -> float:
    """Fraction of rows whose prediction equals the label (the paper's headline number)."""
    yt, yp = _pair(y_true, y_pred)
    return float(np.mean(yt == yp))


def per_class_recall(y_true, y_pred, n_classes: int | None = None) -> np.ndarray:
    """Recall of each class; NaN for a class with no row in ``y_true`` (nothing to recall)."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def balanced_accuracy(y_true, y_pred, n_classes: int | None = None) -> float:
    """Mean recall over the classes present in ``y_true`` (robust to class imbalance)."""
    return float(np.nanmean(per_class_recall(y_true, y_pred, n_classes)))


def macro_f1(y_true, y_pred, n_classes: int | None = None) -> float:
    """Unweighted mean F1 over the classes present in ``y_true``.

    A present class that is never predicted has precision 0 by convention, hence F1 = 0.
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(float)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # (tp + fp) + (tp + fn)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    present = cm.sum(axis=1) > 0
    return float(f1[present].mean())


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties (same value as the trapezoidal ROC area)."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=float)
    # Average rank within blocks of tied scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.size]))
    block_rank = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(block_rank, ends - starts)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc(y_true, proba, n_classes: int | None = None) -> float:
    """One-vs-rest macro AUROC from class probabilities (or any per-class scores).

    Binary problems (two columns) return the AUROC of class 1 against class 0. For more classes,
    each class with at least one positive and one negative row contributes its one-vs-rest AUROC
    and the unweighted mean is returned; classes absent from ``y_true`` are skipped (their AUROC is
    undefined). Returns NaN when no class can be scored (e.g. a single class in ``y_true``).
    """
    yt = _labels(y_true, "y_true")
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2 or p.shape[0] != yt.size:
        raise ProbeError(f"proba must be (n_rows, n_classes) with {yt.size} rows, got {p.shape}")
    k = p.shape[1] if n_classes is None else int(n_classes)
    if p.shape[1] != k:
        raise ProbeError(f"proba has {p.shape[1]} columns for {k} classes")
    if k == 2:
        pos = yt == 1
        return _binary_auc(p[:, 1], pos) if 0 < pos.sum() < yt.size else float("nan")
    aucs = [
        _binary_auc(p[:, c], yt == c) for c in range(k) if 0 < np.sum(yt == c) < yt.size
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


def classification_metrics(y_true, y_pred, proba=None, n_classes: int | None = None) -> dict:
    """All headline metrics of one evaluation as a JSON-ready dict.

    Keys: ``n``, ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``per_class_recall`` (list,
    None where a class is absent from ``y_true``) and, when ``proba`` is given, ``auroc``.
    """
    yt, yp = _pair(y_true, y_pred)
    k = _n_classes(n_classes if n_classes is not None else
                   (None if proba is None else np.asarray(proba).shape[1]), yt, yp)
    recall = per_class_recall(yt, yp, k)
    out = {
        "n": int(yt.size),
        "accuracy": accuracy(yt, yp),
        "balanced_accuracy": float(np.nanmean(recall)),
        "macro_f1": macro_f1(yt, yp, k),
        "per_class_recall": [None if np.isnan(r) else float(r) for r in recall],
    }
    if proba is not None:
        out["auroc"] = auroc(yt, proba, k)
    return out


def mean_ci(values, level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of a Student-t confidence interval for the mean.

    Used over few-shot episodes: episodes are independent draws of support sets, so the mean
    accuracy has a t interval ``mean ± t_{(1+level)/2, n-1} · s / sqrt(n)`` (s: sample std with
    ``ddof=1``). With 600 episodes the t and normal quantiles agree to three digits; using t keeps
    the interval honest for small episode counts. One value gives a half-width of NaN.
    """
    from scipy import stats

    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0:
        raise ProbeError("mean_ci needs at least one value")
    if not 0.0 < level < 1.0:
        raise ProbeError(f"confidence level must lie in (0, 1), got {level}")
    mean = float(v.mean())
    if v.size == 1:
        return mean, float("nan")
    half = stats.t.ppf((1.0 + level) / 2.0, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return mean, float(half)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) over seeds; std is 0 for one seed.

    This is the paper's "mean ± std over seeds 1, 2, 3"; a deterministic method repeated over
    seeds honestly reports ± 0.
    """
    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0:
        raise ProbeError("mean_std needs at least one value")
    if np.all(v == v[0]):
        return float(v[0]), 0.0  # exactly 0, not a rounding residue
    return float(v.mean()), float(v.std(ddof=1))


def batch_confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Confusion matrices of many predictions of the same rows: ``(E, n) -> (E, C, C)``.

    ``y_true`` is shared (``(n,)``) or per prediction (``(E, n)``); one bincount does all ``E``.
    """
    yp = np.asarray(y_pred, dtype=np.int64)
    yt = np.broadcast_to(np.asarray(y_true, dtype=np.int64), yp.shape)
    offset = (np.arange(yp.shape[0], dtype=np.int64) * n_classes * n_classes)[:, None]
    flat = offset + yt * n_classes + yp
    counts = np.bincount(flat.ravel(), minlength=yp.shape[0] * n_classes * n_classes)
    return counts.reshape(yp.shape[0], n_classes, n_classes)


def metrics_from_confusion(cm) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro-F1 of each confusion matrix in ``(E, C, C)``.

    Same definitions as :func:`accuracy`, :func:`balanced_accuracy` and :func:`macro_f1`
    (classes absent from the true labels are left out of the averages), vectorised over ``E``.
    """
    cm = np.asarray(cm, dtype=float)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support = cm.sum(axis=2)
    predicted = cm.sum(axis=1)
    present = support > 0
    n_present = present.sum(axis=1)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "accuracy": tp.sum(axis=1) / cm.sum(axis=(1, 2)),
        "balanced_accuracy": (recall * present).sum(axis=1) / n_present,
        "macro_f1": (f1 * present).sum(axis=1) / n_present,
    }


def coarse_proba(fine_proba, level_map: Sequence[int], n_level_classes: int) -> np.ndarray:
    """Sum fine-class probabilities up the tree into one level's classes.

    ``level_map[c]`` is the level class of fine class ``c``, or -1 when the fine class is coarser
    than the level (HiCervix's ``AGC`` has no level-2 class). Such a class's probability is
    dropped rather than spread over its children: the model did not commit to any of them, and the
    official evaluation leaves rows of that class out of the level anyway. The result is therefore
    not renormalised (rows can sum to less than 1); argmax is unaffected.

    Works on any leading shape: ``(..., n_fine) -> (..., n_level_classes)``.
    """
    p = np.asarray(fine_proba)
    m = np.asarray(level_map, dtype=np.int64)
    if p.shape[-1] != m.size:
        raise ProbeError(f"level map has {m.size} entries for {p.shape[-1]} fine classes")
    if m.max(initial=-1) >= n_level_classes:
        raise ProbeError(f"level map points past the {n_level_classes} classes of the level")
    onehot = np.zeros((m.size, n_level_classes), dtype=p.dtype if p.dtype.kind == "f" else float)
    keep = m >= 0
    onehot[np.flatnonzero(keep), m[keep]] = 1.0
    return p @ onehot


def level_predictions(fine_proba, level_map: Sequence[int], n_level_classes: int) -> np.ndarray:
    """Predicted class at one level: argmax of the fine probabilities summed up the tree."""
    return np.argmax(coarse_proba(fine_proba, level_map, n_level_classes), axis=-1)


def _n_level_classes(level_map, levels_col: np.ndarray, n_level_classes) -> int:
    if n_level_classes is not None:
        return int(n_level_classes)
    return int(max(np.max(level_map, initial=-1), levels_col.max(initial=-1))) + 1


def hierarchical_metrics(
    fine_proba,
    levels_true,
    level_maps: Mapping[str, Sequence[int]],
    level_names: Sequence[str],
    n_level_classes: Mapping[str, int] | None = None,
) -> dict:
    """The official per-level evaluation (HierSwin's protocol on HiCervix).

    Level ``i`` is scored on exactly the rows whose true level-``i`` label is set
    (``levels_true[:, i] >= 0``): on HiCervix's test split 8,051 rows at level 1, 7,644 at level 2
    (rows labelled only ``AGC`` dropped) and 6,946 at level 3 (rows whose finest label is ``AGC``,
    ``AGC-NOS`` or ``ADC`` dropped). Predictions come from summing the fine probabilities up the
    tree (:func:`coarse_proba`).

    Returns ``{level_name: classification_metrics(...) for each level, "average": mean of the
    level accuracies}``; ``average`` is the number HierSwin reports beside the three levels.
    """
    p = np.asarray(fine_proba, dtype=float)
    lv = np.asarray(levels_true)
    if lv.ndim != 2 or lv.shape != (p.shape[0], len(level_names)):
        raise ProbeError(
            f"levels_true must be (n_rows, {len(level_names)}) matching proba rows, got {lv.shape}"
        )
    out: dict = {}
    for i, name in enumerate(level_names):
        if name not in level_maps:
            raise ProbeError(f"no level map for level {name!r}: the store lacks its hierarchy")
        k = _n_level_classes(level_maps[name], lv[:, i],
                             None if n_level_classes is None else n_level_classes.get(name))
        rows = lv[:, i] >= 0
        if not rows.any():
            raise ProbeError(f"no evaluation row has a {name} label")
        level_p = coarse_proba(p[rows], level_maps[name], k)
        pred = np.argmax(level_p, axis=1)
        out[name] = classification_metrics(lv[rows, i].astype(np.int64), pred, level_p, k)
    out["average"] = float(np.mean([out[name]["accuracy"] for name in level_names]))
    return out


def per_class_scores(y_true, y_pred, n_classes: int | None = None) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support (test rows) of every class.

    Recall is NaN for a class with no test row, precision NaN for a class never predicted (there
    is nothing to be precise about), F1 NaN when both are undefined; a class that is present but
    never predicted gets precision NaN, recall 0 and F1 0, as in :func:`macro_f1`.
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        denom = support + predicted
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}
