"""One sampling module for both stages: supports unchanged bit for bit, fractions nested."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import numpy as np
import pytest

import embedcyto
from embedcyto.datasets.sampling import (
    fraction_count,
    fraction_indices,
    per_class_indices,
    support_batch,
    support_ids,
    support_indices,
)
from embedcyto.errors import LoraError, ProbeError, SamplingError
from embedcyto.lora.data import fraction_rows, support_rows, validation_rows
from embedcyto.probes import episodes


def _pool(sizes=(7, 12, 5, 30), seed=0):
    labels = np.concatenate([np.full(s, c) for c, s in enumerate(sizes)])
    ids = np.array([f"class{lab}/cell_{i:04d}.png" for i, lab in enumerate(labels)])
    perm = np.random.default_rng(seed).permutation(labels.size)
    return ids[perm], labels[perm]


# Digests of the draws made before the sampling code moved into embedcyto.datasets.sampling:
# the same (ids, labels, shots, seed, episode) must keep giving the same images, or every
# stored result and LoRA run would silently stop being comparable with new ones.
SUPPORT_DIGEST = "c04daff2dc404bc9c6357852f0bc9d2feee5fd44fbd9de6271842d96df0a41a6"
BATCH_DIGEST = "276b83825feb4bbc69ce44e63d3208cab15a088fc5323d5627be91bba32f3e04"
VALIDATION_DIGEST = "bd41c72727a257c172d93bc28dc23d786b2912fec72dc25ac372d6feebd00591"


def test_support_draws_are_bit_identical_to_the_earlier_ones():
    ids, labels = _pool()
    digest = hashlib.sha256()
    for shots in (1, 2, 5):
        for seed in (0, 1, 7):
            for episode in (0, 3, 599):
                idx = support_indices(ids, labels, shots, seed, episode)
                digest.update(("|".join(ids[idx].tolist()) + "\n").encode())
    assert digest.hexdigest() == SUPPORT_DIGEST
    batch = support_batch(ids, labels, 3, 2, np.arange(50))
    assert batch.dtype == np.int64 and batch.shape == (50, 4, 3)
    assert hashlib.sha256(batch.tobytes()).hexdigest() == BATCH_DIGEST


def test_validation_draws_are_bit_identical_to_the_earlier_ones():
    ids, labels = _pool()
    digest = hashlib.sha256()
    for seed in (0, 1, 5):
        for per in (1, 4):
            pos = per_class_indices(ids, labels, per, seed, "val", n_classes=4)
            digest.update(("|".join(ids[pos].tolist()) + "\n").encode())
    assert digest.hexdigest() == VALIDATION_DIGEST


def test_probes_and_lora_use_the_same_functions():
    assert episodes.support_indices is support_indices
    assert episodes.support_ids is support_ids
    assert embedcyto.probes.support_ids is support_ids


def test_too_few_images_is_a_sampling_error_that_probes_and_lora_understand():
    ids, labels = _pool(sizes=(3, 8))
    with pytest.raises(SamplingError, match="class 'a' has 3 training images"):
        support_indices(ids, labels, 4, 0, 0, class_names=("a", "b"))
    assert issubclass(SamplingError, ProbeError)
    with pytest.raises(SamplingError, match="percentage"):
        fraction_indices(ids, labels, 0, seed=0)
    with pytest.raises(SamplingError, match="not unique"):
        fraction_indices(np.array(["x", "x"]), np.array([0, 0]), 50, seed=0)


def test_lora_does_not_import_probes():
    package = Path(embedcyto.__file__).parent / "lora"
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("embedcyto.probes") for n in names), module.name


PERCENTS = (1, 5, 10, 20, 25, 50, 75, 99, 100)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fractions_are_nested_for_one_seed(seed):
    ids, labels = _pool(sizes=(40, 113, 7, 1, 260), seed=seed)
    previous: set[str] = set()
    for percent in PERCENTS:
        chosen = set(ids[fraction_indices(ids, labels, percent, seed, n_classes=5)].tolist())
        assert previous <= chosen, f"{percent} % does not contain the smaller fraction"
        previous = chosen
    assert previous == set(ids.tolist())


def test_fractions_are_stratified_per_class():
    sizes = (40, 113, 7, 1, 260, 0)
    ids, labels = _pool(sizes=sizes)
    for percent in PERCENTS:
        picked = fraction_indices(ids, labels, percent, 3, n_classes=6)
        counts = np.bincount(labels[picked], minlength=6)
        expected = [fraction_count(n, percent) for n in sizes]
        assert counts.tolist() == expected
        for n, c in zip(sizes, counts):  # within one image of the exact share, never empty
            assert n == 0 or (c >= 1 and abs(c - n * percent / 100) <= max(1, 0.5 + 1e-9))


def test_fractions_do_not_depend_on_row_order_but_on_seed_and_pool():
    ids, labels = _pool(sizes=(30, 50))
    perm = np.random.default_rng(9).permutation(ids.size)
    a = set(ids[fraction_indices(ids, labels, 30, 4)].tolist())
    b = set(ids[perm][fraction_indices(ids[perm], labels[perm], 30, 4)].tolist())
    assert a == b
    assert a != set(ids[fraction_indices(ids, labels, 30, 5)].tolist())
    assert a != set(ids[fraction_indices(ids, labels, 30, 4, tag="other")].tolist())


def test_lora_fraction_rows_are_nested_and_lora_support_rows_are_episode_zero(tmp_path):
    from embedcyto.datasets import open_dataset
    from embedcyto.datasets.fixtures import make_fixture

    root = make_fixture("folder", tmp_path / "data", per_class=20)
    dataset = open_dataset("folder", root, seed=0)
    for split in ("train", "val"):
        small = set(fraction_rows(dataset, split, 10, seed=1).tolist())
        large = set(fraction_rows(dataset, split, 90, seed=1).tolist())
        assert small < large
        assert {dataset.records[i].split for i in large} == {split}
    train = [i for i, r in enumerate(dataset.records) if r.split == "train"]
    ids = np.array([dataset.records[i].path for i in train])
    labels = np.array([dataset.records[i].label for i in train])
    rows = support_rows(dataset, 2, 3)
    assert sorted(dataset.records[i].path for i in rows) == sorted(support_ids(ids, labels, 2,
                                                                               3, 0).tolist())
    assert len(validation_rows(dataset, 1, 0)) == len(dataset.classes)
    with pytest.raises(LoraError, match="fewer than shots=99"):
        support_rows(dataset, 99, 0)
