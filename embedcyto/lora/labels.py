"""Which classes a LoRA run's head learns (its training label space), and the study's 25 classes.

By default a run learns the dataset's own classes (``label_space="classes"``). On HiCervix those
are the 26 *annotated* classes, which include cells the annotators labelled only at a coarse
level (``AGC``; ``AGC-NOS`` and ``ADC`` without a level-3 subtype): the head then spends output
units on "AGC, subtype unknown", and such cells train it although the official level-3 test
never scores them. A run can instead learn any label space the dataset defines
(``level_1``, ``level_2``, ``level_3``, or the study's 25-class ``level_3_study25``): images
without a label in that space leave training and validation, the whole test split stays.

:func:`training_view` gives the dataset as the run sees it (the same images, relabelled), so
data selection, training and testing need no second code path; the official per-level
evaluation still reads each test image's true levels, and the study's flat 25-class accuracy
(:func:`study25_metrics`) is computed from the same predictions whatever space was trained.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from embedcyto.datasets.records import Dataset
from embedcyto.errors import LoraError
from embedcyto.lora.config import DATASET_CLASSES

#: The study's 25-class HiCervix variant (see :mod:`embedcyto.datasets.hicervix_labels`).
STUDY25 = "level_3_study25"
_FINE, _MIDDLE = "level_3", "level_2"


def class_map(dataset: Dataset, space: str) -> np.ndarray:
    """Primary class index -> class index in ``space`` (-1: the class has no label there).

    Raises:
        LoraError: the dataset has no such label space (the valid names are listed).
    """
    if space == DATASET_CLASSES:
        return np.arange(len(dataset.classes), dtype=np.int64)
    if space in dataset.level_maps:
        return np.asarray(dataset.level_maps[space], dtype=np.int64)
    if space == STUDY25 and STUDY25 in dataset.label_spaces:
        return study25_map(dataset.level_maps, dataset.label_spaces)
    valid = [DATASET_CLASSES, *dataset.level_maps]
    if STUDY25 in dataset.label_spaces:
        valid.append(STUDY25)
    raise LoraError(f"{dataset.name} has no label space {space!r}; choose `label_space=` from "
                    f"{', '.join(valid)}")


def study25_map(level_maps, label_spaces) -> np.ndarray:
    """Class -> study-25 class: the class's level-3 name if it has one, else its level-2 name.

    That is the Dausort et al. label (the level-3 annotation if set, else the level-2 one):
    official level 3 names a childless level-2 class (``Normal``) itself, and a level-2 class
    with subtypes (``AGC-NOS``) has no level-3 name but is a study-25 class of its own.
    """
    names = label_spaces[STUDY25].classes
    fine, middle = (np.asarray(level_maps[k], dtype=np.int64) for k in (_FINE, _MIDDLE))
    out = np.full(fine.size, -1, dtype=np.int64)
    for c in range(fine.size):
        if fine[c] >= 0:
            out[c] = names.index(label_spaces[_FINE].classes[fine[c]])
        elif middle[c] >= 0:
            out[c] = names.index(label_spaces[_MIDDLE].classes[middle[c]])
    return out


def study25_truth(dataset: Dataset, rows: np.ndarray) -> np.ndarray:
    """Each row's true study-25 class from its level labels (-1: labelled ``AGC`` only)."""
    names = dataset.label_spaces[STUDY25].classes
    fine_i, mid_i = (dataset.level_names.index(k) for k in (_FINE, _MIDDLE))
    out = np.full(len(rows), -1, dtype=np.int64)
    for n, row in enumerate(rows):
        levels = dataset.records[int(row)].levels
        if levels[fine_i] >= 0:
            out[n] = names.index(dataset.label_spaces[_FINE].classes[levels[fine_i]])
        elif levels[mid_i] >= 0:
            out[n] = names.index(dataset.label_spaces[_MIDDLE].classes[levels[mid_i]])
    return out


def has_study25(dataset: Dataset) -> bool:
    """Whether the study's 25-class accuracy can be computed (HiCervix-like datasets)."""
    return STUDY25 in dataset.label_spaces and all(
        k in dataset.level_maps and k in dataset.level_names for k in (_FINE, _MIDDLE))


def training_view(dataset: Dataset, space: str) -> Dataset:
    """``dataset`` with every record relabelled in ``space`` (the dataset itself for
    ``"classes"``); training and validation images without a label there are dropped, test
    images are all kept (label -1 where they have none). The level maps follow the new classes
    so that per-level evaluation works unchanged.

    Raises:
        LoraError: unknown label space, or one whose classes map to two parents at a level.
    """
    if space == DATASET_CLASSES:
        return dataset
    mapping = class_map(dataset, space)
    classes = dataset.label_spaces[space].classes
    records = [dataclasses.replace(r, label=int(mapping[r.label])) for r in dataset.records
               if mapping[r.label] >= 0 or r.split == "test"]
    level_maps = {name: _compose(mapping, np.asarray(m), len(classes), space, name)
                  for name, m in dataset.level_maps.items()}
    return dataclasses.replace(dataset, classes=tuple(classes), records=records,
                               level_maps=level_maps)


def _compose(mapping: np.ndarray, level_map: np.ndarray, n: int, space: str,
             level: str) -> tuple[int, ...]:
    """New class -> level class, through any primary class that maps to it."""
    out = [-1] * n
    for primary, new in enumerate(mapping):
        if new < 0:
            continue
        value = int(level_map[primary])
        if out[new] not in (-1, value):
            raise LoraError(f"label space {space!r} is not a refinement of {level}: its class "
                            f"{new} falls under two {level} classes")
        out[new] = value
    return tuple(out)


def study25_metrics(dataset: Dataset, rows: np.ndarray, proba: np.ndarray) -> dict:
    """The study's flat 25-class accuracy (and its other metrics) from the run's predictions.

    The probabilities of the trained classes are summed into the 25 classes (a class without a
    study-25 name, ``AGC``, contributes nothing) and scored on the test rows that have a
    study-25 label (7,644 of HiCervix's 8,051).
    """
    from embedcyto.metrics import classification_metrics, coarse_proba

    truth = study25_truth(dataset, rows)
    keep = truth >= 0
    k = len(dataset.label_spaces[STUDY25].classes)
    p = coarse_proba(proba[keep], study25_map(dataset.level_maps, dataset.label_spaces), k)
    metrics = classification_metrics(truth[keep], p.argmax(axis=1), p, k)
    metrics["n"] = int(keep.sum())
    return metrics
