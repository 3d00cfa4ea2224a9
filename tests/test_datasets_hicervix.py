"""HiCervix: label logic from the real CSVs, and an end-to-end read of a generated subset."""

from __future__ import annotations

import csv
import shutil
from collections import Counter

import numpy as np
import pytest

from embedcyto.datasets import hicervix_study25_labels, open_dataset, read_hicervix_labels
from embedcyto.datasets.fixtures import make_fixture
from embedcyto.datasets.hicervix_labels import bundled_csv_dir, long_names
from embedcyto.errors import DatasetError


@pytest.fixture(scope="module")
def labels():
    return read_hicervix_labels()


def _raw_rows(split):
    with (bundled_csv_dir() / f"{split}.csv").open(newline="", encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle))


def test_official_splits_and_primary_classes(labels):
    sizes = Counter(r.split for r in labels.records)
    assert sizes == {s: len(_raw_rows(s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 40229
    assert labels.official_split and len(labels.classes) == 26
    assert labels.level_names == ("level_1", "level_2", "level_3")


def test_official_level_subsets_on_test(labels):
    test = [r for r in labels.records if r.split == "test"]
    kept = [sum(r.levels[i] >= 0 for r in test) for i in range(3)]
    assert kept == [8051, 7644, 6946]
    sizes = [len(labels.label_spaces[n].classes) for n in labels.level_names]
    assert sizes == [4, 21, 23]
    for i, level in enumerate(labels.level_names):
        used = {r.levels[i] for r in test if r.levels[i] >= 0}
        assert used == set(range(sizes[i])), level


def test_levels_follow_the_csv_cells(labels):
    """Each record's level labels are the CSV's cells, with the contract's -1 rules."""
    rows = {f"test/{r['image_name']}": r for r in _raw_rows("test")}
    spaces = [labels.label_spaces[n].classes for n in labels.level_names]
    childless = {"AGC-NOS", "ADC"}
    for rec in labels.records:
        if rec.split != "test":
            continue
        row = rows[rec.path]
        assert labels.classes[rec.label] == row["class_name"]
        assert spaces[0][rec.levels[0]] == row["level_1"]
        if row["class_name"] == "AGC":
            assert rec.levels[1] == -1 and rec.levels[2] == -1
            continue
        assert spaces[1][rec.levels[1]] == row["level_2"]
        if row["level_3"]:
            assert spaces[2][rec.levels[2]] == row["level_3"]
        elif row["level_2"] in childless:
            assert rec.levels[2] == -1
        else:
            assert spaces[2][rec.levels[2]] == row["level_2"]


def test_level_maps_agree_with_records_and_hierarchy(labels):
    for i, level in enumerate(labels.level_names):
        mapping = labels.level_maps[level]
        assert len(mapping) == 26
        assert all(mapping[r.label] == r.levels[i] for r in labels.records)
    h = labels.hierarchy
    assert h["ADC-ECC"] == "ADC" and h["ADC"] == "AGC" and h["Normal"] == "negative"
    level_1, level_2, level_3 = (labels.label_spaces[n].classes for n in labels.level_names)
    assert all(h[name] in level_1 for name in level_2)
    assert all(h[name] in level_2 for name in level_3 if name not in level_2)


def test_study25_variant(labels):
    classes = labels.label_spaces["level_3_study25"].classes
    assert len(classes) == 25
    assert set(classes) == (set(labels.label_spaces["level_2"].classes)
                            | set(labels.label_spaces["level_3"].classes))
    y = hicervix_study25_labels(labels)
    test = np.array([r.split == "test" for r in labels.records])
    assert int((y[test] >= 0).sum()) == 7644
    assert set(np.unique(y[y >= 0])) == set(range(25))
    assert "level_3_study25" not in labels.level_names


def test_study25_refuses_other_datasets(tmp_path):
    root = make_fixture("folder", tmp_path / "d", per_class=1)
    with pytest.raises(DatasetError, match="HiCervix only"):
        hicervix_study25_labels(open_dataset("folder", root))


def test_long_names():
    names = long_names()
    assert names["ADC-ECC"] == "Adenocarcinoma(endocervical cell)"
    assert len(names) >= 26


@pytest.fixture()
def subset(tmp_path):
    return make_fixture("hicervix", tmp_path / "hicervix", per_class=1)


def test_end_to_end_on_generated_subset(subset):
    ds = open_dataset("hicervix", subset, verify_images=True)
    per_split = Counter(r.split for r in ds.records)
    assert per_split == {"train": 26, "val": 26, "test": 26}
    assert Counter(ds.classes[r.label] for r in ds.records) == {c: 3 for c in ds.classes}
    assert all((subset / r.path).is_file() and r.path.startswith(r.split + "/")
               for r in ds.records)
    assert not ds.skipped


def _rewrite(path, edit):
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    edit(rows)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("name, message", [
    ("../escape.jpg", "contains '..'"),
    ("/etc/passwd", "absolute"),
])
def test_escaping_image_names_are_refused(subset, name, message):
    _rewrite(subset / "val.csv", lambda rows: rows[0].update(image_name=name))
    with pytest.raises(DatasetError, match=message) as err:
        open_dataset("hicervix", subset)
    assert "val.csv, line 2" in str(err.value)


def test_symlink_out_of_root_is_refused(subset, tmp_path):
    outside = tmp_path / "elsewhere.jpg"
    shutil.copy(next((subset / "test").glob("*.jpg")), outside)
    _rewrite(subset / "test.csv", lambda rows: rows[0].update(image_name="evil.jpg"))
    (subset / "test" / "evil.jpg").symlink_to(outside)
    with pytest.raises(DatasetError, match="outside the dataset root"):
        open_dataset("hicervix", subset)


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows[1].update(class_name="Banana"), "line 3: unknown class_name 'Banana'"),
    (lambda rows: rows[0].update(class_id="x"), "line 2: class_id 'x' is not an integer"),
    (lambda rows: rows[0].update(class_id="99"), "line 2: class_id 99 does not match"),
    (lambda rows: rows[0].update(level_1="microbe" if rows[0]["level_1"] != "microbe"
                                 else "negative"), "line 2: levels"),
])
def test_malformed_csv_names_file_and_line(subset, edit, message):
    _rewrite(subset / "train.csv", edit)
    with pytest.raises(DatasetError, match=message) as err:
        open_dataset("hicervix", subset)
    assert "train.csv" in str(err.value)


def test_missing_column(subset):
    text = (subset / "test.csv").read_text().replace("class_id", "klass", 1)
    (subset / "test.csv").write_text(text)
    with pytest.raises(DatasetError, match="test.csv, line 1: missing column\\(s\\) class_id"):
        open_dataset("hicervix", subset)


def test_missing_images_skip_or_error(subset):
    gone = sorted((subset / "val").glob("*.jpg"))[:2]
    for path in gone:
        path.unlink()
    ds = open_dataset("hicervix", subset)
    assert [p for p, _ in ds.skipped] == sorted(f"val/{p.name}" for p in gone)
    assert len(ds.records) == 78 - 2
    with pytest.raises(DatasetError, match="2 image\\(s\\) listed in the CSVs are missing"):
        open_dataset("hicervix", subset, on_bad_image="error")


def test_wrong_root(tmp_path, subset):
    with pytest.raises(DatasetError, match="not a HiCervix root.*csv_dir="):
        open_dataset("hicervix", tmp_path)
    for folder in ("train", "val", "test"):
        shutil.rmtree(subset / folder)
    with pytest.raises(DatasetError, match="none of the 78 images"):
        open_dataset("hicervix", subset)


def test_csv_dir_option(subset, tmp_path):
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    for split in ("train", "val", "test"):
        (subset / f"{split}.csv").rename(labels_dir / f"{split}.csv")
    ds = open_dataset("hicervix", subset, csv_dir=labels_dir)
    assert len(ds.records) == 78
