"""The study's flat 25-class HiCervix accuracy, from any predictions over a dataset's classes.

Dausort et al. report HiCervix as flat accuracy over 25 classes: each cell's level-3 annotation
where it has one, else its level-2 one (7,644 of the 8,051 test cells; the 407 cells annotated
only as ``AGC`` have no such label). embedcyto's official numbers are the per-level accuracies;
this module gives the study's number *from the same predictions*, so a linear probe, a few-shot
episode or a LoRA run can be set beside the paper without a second evaluation.

Everything here is a pure function of arrays and class names, so probe rows (which see a feature
store) and LoRA runs (which see a :class:`~embedcyto.datasets.records.Dataset`) share it.
``label_spaces`` maps a label space's name to its class names, in label order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: The study's 25-class HiCervix variant (see :mod:`embedcyto.datasets.hicervix_labels`).
STUDY25 = "level_3_study25"
#: Where result rows and LoRA metrics keep these metrics, beside ``levels``.
RESULT_KEY = "study25"
_FINE, _MIDDLE = "level_3", "level_2"


def has_study25(label_spaces: Mapping[str, Sequence[str]], level_maps: Mapping,
                level_names: Sequence[str]) -> bool:
    """Whether the study's 25-class accuracy can be computed (HiCervix-like label spaces)."""
    return STUDY25 in label_spaces and all(
        k in level_maps and k in level_names and k in label_spaces for k in (_FINE, _MIDDLE))


def study25_map(level_maps: Mapping[str, Sequence[int]],
                label_spaces: Mapping[str, Sequence[str]]) -> np.ndarray:
    """Class -> study-25 class: the class's level-3 name if it has one, else its level-2 name.

    That is the Dausort et al. label (the level-3 annotation if set, else the level-2 one):
    official level 3 names a childless level-2 class (``Normal``) itself, and a level-2 class
    with subtypes (``AGC-NOS``) has no level-3 name but is a study-25 class of its own.
    """
    names = list(label_spaces[STUDY25])
    fine, middle = (np.asarray(level_maps[k], dtype=np.int64) for k in (_FINE, _MIDDLE))
    out = np.full(fine.size, -1, dtype=np.int64)
    for c in range(fine.size):
        if fine[c] >= 0:
            out[c] = names.index(label_spaces[_FINE][fine[c]])
        elif middle[c] >= 0:
            out[c] = names.index(label_spaces[_MIDDLE][middle[c]])
    return out


def study25_truth(levels: np.ndarray, level_names: Sequence[str],
                  label_spaces: Mapping[str, Sequence[str]]) -> np.ndarray:
    """Each row's true study-25 class from its (n, L) level labels (-1: labelled ``AGC`` only)."""
    names = list(label_spaces[STUDY25])
    levels = np.asarray(levels, dtype=np.int64).reshape(-1, len(level_names))
    fine = levels[:, list(level_names).index(_FINE)]
    middle = levels[:, list(level_names).index(_MIDDLE)]
    by_fine = np.array([names.index(n) for n in label_spaces[_FINE]] or [-1], dtype=np.int64)
    by_middle = np.array([names.index(n) if n in names else -1 for n in label_spaces[_MIDDLE]]
                         or [-1], dtype=np.int64)
    return np.where(fine >= 0, by_fine[np.maximum(fine, 0)],
                    np.where(middle >= 0, by_middle[np.maximum(middle, 0)], -1))


def study25_metrics(proba: np.ndarray, levels: np.ndarray, level_names: Sequence[str],
                    level_maps: Mapping[str, Sequence[int]],
                    label_spaces: Mapping[str, Sequence[str]]) -> dict:
    """The study's flat 25-class metrics of ``proba`` (rows: test images; columns: the classes
    the predictions are over, which ``level_maps`` map to levels).

    The probabilities are summed into the 25 classes (a class without a study-25 name, ``AGC``,
    contributes nothing) and scored on the rows that have a study-25 label; ``n`` says how many.
    """
    from embedcyto.metrics import classification_metrics, coarse_proba

    truth = study25_truth(levels, level_names, label_spaces)
    keep = truth >= 0
    k = len(label_spaces[STUDY25])
    p = coarse_proba(np.asarray(proba)[keep], study25_map(level_maps, label_spaces), k)
    metrics = classification_metrics(truth[keep], p.argmax(axis=1), p, k)
    metrics["n"] = int(keep.sum())
    return metrics
