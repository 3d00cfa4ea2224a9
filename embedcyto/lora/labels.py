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

from embedcyto import study25
from embedcyto.datasets.records import Dataset
from embedcyto.errors import LoraError
from embedcyto.lora.config import DATASET_CLASSES
from embedcyto.study25 import STUDY25



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


def _spaces(dataset: Dataset) -> dict[str, tuple[str, ...]]:
    return {name: tuple(space.classes) for name, space in dataset.label_spaces.items()}


def study25_map(level_maps, label_spaces) -> np.ndarray:
    """Class -> study-25 class (:func:`embedcyto.study25.study25_map`) for a dataset's
    ``label_spaces`` (:class:`~embedcyto.datasets.records.LabelSpace` values)."""
    return study25.study25_map(level_maps, {n: tuple(s.classes) for n, s in label_spaces.items()})


def study25_truth(dataset: Dataset, rows: np.ndarray) -> np.ndarray:
    """Each row's true study-25 class from its level labels (-1: labelled ``AGC`` only)."""
    return study25.study25_truth(_levels(dataset, rows), dataset.level_names, _spaces(dataset))


def _levels(dataset: Dataset, rows: np.ndarray) -> np.ndarray:
    return np.array([dataset.records[int(r)].levels for r in rows],
                    dtype=np.int64).reshape(len(rows), len(dataset.level_names))


def has_study25(dataset: Dataset) -> bool:
    """Whether the study's 25-class accuracy can be computed (HiCervix-like datasets)."""
    return study25.has_study25(_spaces(dataset), dataset.level_maps, dataset.level_names)


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
    """The study's flat 25-class accuracy (and its other metrics) of a run's test predictions
    (:func:`embedcyto.study25.study25_metrics`; 7,644 of HiCervix's 8,051 test rows count)."""
    return study25.study25_metrics(proba, _levels(dataset, rows), dataset.level_names,
                                   dataset.level_maps, _spaces(dataset))
