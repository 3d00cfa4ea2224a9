"""Which images a LoRA run trains, validates and tests on, and how training batches are drawn.

Pairing with the probe stage: for ``shots=K`` and ``seed=S`` the training set is
``support_indices(train ids, train labels, K, seed=S, episode=0)`` from
:mod:`embedcyto.datasets.sampling` — the support set of the first episode (episode 0) that
``embedcyto probe --shots K --seeds S`` evaluates for every model. Because that draw depends only
on the sorted training ids, their labels, K, S and the episode, the LoRA run and every probe use
the same images whatever order the store rows are in.

Validation takes ``min(K, 4)`` images of each class from the validation split (all of a class
when it has fewer), test is the whole test split. With ``fraction=P`` both training and validation
take P percent of each class (at least one image per class present), nested: for one seed the
10 % subset lies inside the 20 % subset, and so on. Every draw is a pure function of the split's
ids, labels and the seed (see :mod:`embedcyto.datasets.sampling`).

Training batches: the training images are visited in a fresh seeded permutation per pass,
batches run across pass boundaries, and each image carries its own augmentation seed, so the run
is reproducible whatever the number of decoding workers. Under ``torchrun`` every global batch
is cut into one contiguous slice per rank (:func:`rank_plan`); the seeds travel with the images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedcyto.datasets.records import Dataset
from embedcyto.datasets.sampling import fraction_indices, per_class_indices, support_indices
from embedcyto.errors import LoraError, SamplingError
from embedcyto.lora.config import LoraRunConfig

#: Validation images per class in few-shot runs: min(K, this).
MAX_VAL_SHOTS = 4


@dataclass(frozen=True)
class RunRows:
    """Row indices into ``dataset.records`` of each part of a run."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _split_rows(dataset: Dataset, split: str) -> np.ndarray:
    return np.array([i for i, r in enumerate(dataset.records) if r.split == split], dtype=np.int64)


def _ids_labels(dataset: Dataset, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([dataset.records[i].path for i in rows], dtype=str)
    labels = np.array([dataset.records[i].label for i in rows], dtype=np.int64)
    return ids, labels


def support_rows(dataset: Dataset, shots: int, seed: int) -> np.ndarray:
    """The probe stage's support set of (shots, seed), episode 0, as rows of ``dataset``.

    Raises:
        LoraError: a class has fewer than ``shots`` training images (named, with its count).
    """
    train = _split_rows(dataset, "train")
    ids, labels = _ids_labels(dataset, train)
    try:
        picked = support_indices(ids, labels, shots, seed, 0, n_classes=len(dataset.classes),
                                 class_names=dataset.classes)
    except SamplingError as err:
        raise LoraError(f"{dataset.name}: {err}") from err
    return train[picked]


def validation_rows(dataset: Dataset, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` validation images of each class (all of a class that has fewer)."""
    val = _split_rows(dataset, "val")
    ids, labels = _ids_labels(dataset, val)
    return val[per_class_indices(ids, labels, per_class, seed, "val",
                                 n_classes=len(dataset.classes))]


def fraction_rows(dataset: Dataset, split: str, percent: float, seed: int) -> np.ndarray:
    """``percent`` % of each class of ``split`` (rounded, at least one image per class present),
    nested across percentages for one seed."""
    rows = _split_rows(dataset, split)
    ids, labels = _ids_labels(dataset, rows)
    if percent >= 100:
        return rows
    try:
        picked = fraction_indices(ids, labels, percent, seed, f"fraction-{split}",
                                  n_classes=len(dataset.classes))
    except SamplingError as err:
        raise LoraError(f"{dataset.name}: {err}") from err
    return rows[picked]


def _check_train_classes(dataset: Dataset, rows: np.ndarray) -> None:
    present = {dataset.records[i].label for i in rows}
    missing = [c for i, c in enumerate(dataset.classes) if i not in present]
    if missing:
        raise LoraError(
            f"{dataset.name}: class(es) {missing} have no training image, so the classifier "
            "cannot learn them; check the dataset layout or its split")


def select_rows(dataset: Dataset, config: LoraRunConfig) -> RunRows:
    """Training, validation and test rows of a run (see the module docstring).

    Raises:
        LoraError: too few images for the request, or an empty training or test split.
    """
    test = _split_rows(dataset, "test")
    if config.shots is not None:
        train = support_rows(dataset, config.shots, config.seed)
        val = validation_rows(dataset, min(config.shots, MAX_VAL_SHOTS), config.seed)
    elif config.fraction is not None:
        train = fraction_rows(dataset, "train", config.fraction, config.seed)
        val = fraction_rows(dataset, "val", config.fraction, config.seed)
    else:
        train, val = _split_rows(dataset, "train"), _split_rows(dataset, "val")
    _check_train_classes(dataset, train)
    if test.size == 0:
        raise LoraError(f"{dataset.name} has no test images: re-split it so that test is not "
                        "empty (`ratios=`)")
    return RunRows(train=train, val=val, test=test)


def batch_plan(n_train: int, batch_size: int, iterations: int, seed: int) -> list[list[tuple]]:
    """``iterations`` batches of ``(position, augmentation seed)`` over ``n_train`` images.

    Each pass over the training images is a fresh permutation; a batch that reaches the end of a
    pass continues into the next, so every step has ``min(batch_size, n_train)`` images.
    """
    if n_train < 1:
        raise LoraError("the training set is empty")
    size = min(batch_size, n_train)
    rng = np.random.default_rng([int(seed), 0x10A4])
    needed = iterations * size
    passes = -(-needed // n_train)
    order = np.concatenate([rng.permutation(n_train) for _ in range(passes)])[:needed]
    aug = rng.integers(0, 2**62, size=needed)
    return [list(zip(order[i:i + size].tolist(), aug[i:i + size].tolist()))
            for i in range(0, needed, size)]


def rank_bounds(size: int, world_size: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` slices of a ``size``-image global batch, one per rank.

    The first ``size % world_size`` ranks take one image more, so slices differ by at most one;
    the training loss weights each rank by its share (see :mod:`embedcyto.lora.ddp`).

    Raises:
        LoraError: fewer images per step than ranks (a rank would have nothing to forward).
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise LoraError(f"the number of ranks must be an integer >= 1, got {world_size!r}")
    if size < world_size:
        raise LoraError(f"a training step has {size} image(s), fewer than the {world_size} "
                        "ranks: raise `batch_size=` (or train on more images) or start fewer "
                        "ranks (torchrun --nproc-per-node)")
    base, extra = divmod(size, world_size)
    bounds, start = [], 0
    for rank in range(world_size):
        stop = start + base + (1 if rank < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def rank_plan(plan: list[list[tuple]], rank: int, world_size: int) -> list[list[tuple]]:
    """This rank's part of every batch of a :func:`batch_plan` (see :func:`rank_bounds`).

    The items keep their augmentation seeds, so every image is augmented exactly as in a
    single-process run with the same global batch.
    """
    if not 0 <= rank < world_size:
        raise LoraError(f"rank {rank} is outside 0..{world_size - 1}")
    out = []
    for batch in plan:
        start, stop = rank_bounds(len(batch), world_size)[rank]
        out.append(batch[start:stop])
    return out


class AugmentedImages:
    """Training images with their labels; item ``(position, seed)`` augments with that seed.

    Read errors are returned rather than raised so that a decoding worker never turns an
    unreadable file into an opaque worker traceback; the training loop raises them cleanly.
    """

    def __init__(self, dataset: Dataset, rows: np.ndarray, transform, input_size: int):
        self.root = dataset.root
        self.paths = [dataset.records[i].path for i in rows]
        self.labels = [dataset.records[i].label for i in rows]
        self.transform = transform
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item):
        import torch

        from embedcyto.datasets import read_image
        from embedcyto.errors import ImageReadError

        position, seed = item
        try:
            image = read_image(self.root / self.paths[position], target_size=self.input_size)
        except ImageReadError as err:
            blank = torch.zeros(3, self.input_size, self.input_size)
            return blank, self.labels[position], f"{self.paths[position]}: {err.reason}"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            tensor = self.transform(image)
        return tensor, self.labels[position], ""
