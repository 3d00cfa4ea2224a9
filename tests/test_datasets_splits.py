"""Splits: stratified within one image, groups kept whole, saved once, reused, never re-made."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from embedcyto.datasets import open_dataset, split_hash
from embedcyto.datasets.fixtures import make_fixture
from embedcyto.datasets.splits import check_ratios, grouped_split, stratified_split
from embedcyto.errors import SplitError

SPLITS = ("train", "val", "test")


def _deviation(labels, splits, ratios):
    """Largest |count - n * ratio| over classes and splits."""
    labels, worst = np.asarray(labels), 0.0
    for cls in np.unique(labels):
        n = (labels == cls).sum()
        for split, ratio in zip(SPLITS, ratios, strict=True):
            worst = max(worst, abs(((labels == cls) & (splits == split)).sum() - n * ratio))
    return worst


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ratios", [(0.7, 0.1, 0.2), (0.5, 0.25, 0.25), (0.8, 0.0, 0.2)])
def test_stratified_within_one_image(seed, ratios):
    rng = np.random.default_rng(100 + seed)
    labels = rng.integers(0, 7, size=int(rng.integers(50, 400)))
    splits = stratified_split(labels, ratios, seed)
    assert set(splits) <= set(SPLITS)
    assert _deviation(labels, splits, ratios) < 1.0


def test_stratified_is_deterministic_per_seed():
    labels = np.repeat(np.arange(4), 25)
    a, b, c = (stratified_split(labels, seed=s) for s in (3, 3, 4))
    assert (a == b).all() and not (a == c).all()


def _sipakmed_like_groups(rng):
    """Random partitions of each class into clusters, like SIPaKMeD's crops per cluster."""
    labels, groups = [], []
    for cls, (n, k) in enumerate([(813, 223), (825, 238), (793, 271), (787, 108), (831, 126)]):
        cuts = np.sort(rng.choice(np.arange(1, n), k - 1, replace=False))
        for g, size in enumerate(np.diff(np.r_[0, cuts, n])):
            labels += [cls] * int(size)
            groups += [f"{cls}/{g}"] * int(size)
    return np.asarray(labels), np.asarray(groups)


def _assert_groups_whole(groups, splits):
    for g in np.unique(groups):
        assert len(set(splits[groups == g])) == 1, g


@pytest.mark.parametrize("seed", [0, 1])
def test_grouped_split_keeps_groups_and_shares(seed):
    labels, groups = _sipakmed_like_groups(np.random.default_rng(seed))
    splits = grouped_split(labels, groups, (0.7, 0.1, 0.2), seed)
    _assert_groups_whole(groups, splits)
    # Many small clusters let the greedy fill reach every target to within one image.
    assert _deviation(labels, splits, (0.7, 0.1, 0.2)) <= 1.0


def test_grouped_split_bound_with_equal_groups():
    """Only groups of 4: a class's count can miss its share by at most one group."""
    labels = np.repeat(np.arange(3), 40)
    groups = np.asarray([f"{lab}/{i // 4}" for i, lab in enumerate(labels)])
    splits = grouped_split(labels, groups, (0.7, 0.1, 0.2), 0)
    _assert_groups_whole(groups, splits)
    assert _deviation(labels, splits, (0.7, 0.1, 0.2)) <= 4


def test_grouped_split_with_mixed_class_groups():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, size=300)
    groups = np.asarray([f"g{i // 3}" for i in range(300)])
    splits = grouped_split(labels, groups, (0.6, 0.2, 0.2), 1)
    _assert_groups_whole(groups, splits)
    assert _deviation(labels, splits, (0.6, 0.2, 0.2)) <= 6


@pytest.mark.parametrize("ratios", [(0.7, 0.2), (0.5, 0.5, 0.5), (0.0, 0.5, 0.5),
                                    (1.2, -0.1, -0.1), "abc"])
def test_bad_ratios(ratios):
    with pytest.raises(SplitError, match="ratios"):
        check_ratios(ratios)


@pytest.fixture()
def sip(tmp_path):
    return make_fixture("sipakmed", tmp_path / "sip", per_class=10), tmp_path / "splits"


def test_split_file_written_once_and_reused(sip):
    root, split_dir = sip
    first = open_dataset("sipakmed", root, split_dir=split_dir)
    path = split_dir / "splits.json"
    data = json.loads(path.read_text())
    assert data["seed"] == 0 and data["ratios"] == [0.7, 0.1, 0.2]
    assert data["adapter"] == "sipakmed" and len(data["fingerprint"]) == 64
    assert data["assignments"] == {r.path: r.split for r in first.records}
    # no temp files left (the lock file stays: removing it would let two creators in)
    assert sorted(p.name for p in split_dir.iterdir()) == [".splits.json.lock", "splits.json"]
    _assert_groups_whole(np.array([r.group for r in first.records]),
                         np.array([r.split for r in first.records]))
    # The saved file is the source of truth: edit one group's split and it is followed.
    group = first.records[0].group
    moved = {r.path for r in first.records if r.group == group}
    new_split = "val" if first.records[0].split != "val" else "test"
    data["assignments"].update({p: new_split for p in moved})
    path.write_text(json.dumps(data))
    again = open_dataset("sipakmed", root, split_dir=split_dir)
    assert {r.path for r in again.records if r.split == new_split} >= moved
    assert json.loads(path.read_text()) == data


def test_same_seed_same_split_without_file(sip):
    root, _ = sip
    a = open_dataset("sipakmed", root, seed=7)
    b = open_dataset("sipakmed", root, seed=7)
    c = open_dataset("sipakmed", root, seed=8)
    assert [r.split for r in a.records] == [r.split for r in b.records]
    assert [r.split for r in a.records] != [r.split for r in c.records]


def test_refuses_other_seed_or_ratios(sip):
    root, split_dir = sip
    open_dataset("sipakmed", root, split_dir=split_dir, seed=3)
    with pytest.raises(SplitError, match="seed 3 .*pass seed 3"):
        open_dataset("sipakmed", root, split_dir=split_dir, seed=4)
    with pytest.raises(SplitError, match="ratios"):
        open_dataset("sipakmed", root, split_dir=split_dir, seed=3, ratios=(0.6, 0.2, 0.2))


def test_refuses_added_and_removed_images(sip):
    root, split_dir = sip
    open_dataset("sipakmed", root, split_dir=split_dir)
    before = (split_dir / "splits.json").read_text()
    cropped = root / "im_Parabasal" / "CROPPED"
    shutil.copy(cropped / "001_01.bmp", cropped / "099_01.bmp")
    with pytest.raises(SplitError, match="1 added .*099_01.bmp.*delete the file"):
        open_dataset("sipakmed", root, split_dir=split_dir)
    (cropped / "099_01.bmp").unlink()
    (cropped / "001_01.bmp").unlink()
    with pytest.raises(SplitError, match="1 removed"):
        open_dataset("sipakmed", root, split_dir=split_dir)
    assert (split_dir / "splits.json").read_text() == before  # never rewritten


def test_refuses_relabelled_images(tmp_path):
    root = make_fixture("csv", tmp_path / "tab", per_class=4)
    open_dataset("csv", root, split_dir=tmp_path / "s")
    with (root / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[0]["label"] = "negative" if rows[0]["label"] != "negative" else "low_grade"
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(SplitError, match="1 relabelled"):
        open_dataset("csv", root, split_dir=tmp_path / "s")


def test_refuses_malformed_or_foreign_split_file(sip, tmp_path):
    root, split_dir = sip
    split_dir.mkdir()
    (split_dir / "splits.json").write_text("{not json")
    with pytest.raises(SplitError, match="cannot read split file.*delete"):
        open_dataset("sipakmed", root, split_dir=split_dir)
    other = make_fixture("folder", tmp_path / "other", per_class=3)
    (split_dir / "splits.json").unlink()
    open_dataset("folder", other, split_dir=split_dir)
    with pytest.raises(SplitError, match="made for the folder adapter"):
        open_dataset("sipakmed", root, split_dir=split_dir)


def test_split_hash(sip, tmp_path):
    root, split_dir = sip
    open_dataset("sipakmed", root, split_dir=split_dir)
    path = split_dir / "splits.json"
    digest = split_hash(path)
    path.write_text(json.dumps(json.loads(path.read_text()), indent=4))
    assert split_hash(path) == digest
    open_dataset("sipakmed", root, split_dir=tmp_path / "other", seed=1)
    assert split_hash(tmp_path / "other" / "splits.json") != digest


def test_official_split_is_not_saved(tmp_path):
    root = make_fixture("folder", tmp_path / "d", per_class=3, presplit=True)
    ds = open_dataset("folder", root, split_dir=tmp_path / "s", seed=9)
    assert ds.official_split and not (tmp_path / "s").exists()
    assert all(r.path.startswith(r.split + "/") for r in ds.records)


def test_unreadable_images_do_not_change_the_split(sip):
    root, split_dir = sip
    first = open_dataset("sipakmed", root, split_dir=split_dir)
    victim = root / first.records[3].path
    victim.write_bytes(b"BM not really")
    ds = open_dataset("sipakmed", root, split_dir=split_dir, verify_images=True)
    assert [p for p, _ in ds.skipped] == [first.records[3].path]
    expected = {r.path: r.split for r in first.records if r.path != first.records[3].path}
    assert {r.path: r.split for r in ds.records} == expected
