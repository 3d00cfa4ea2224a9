"""Adapters on generated copies of each real layout: exact counts, labels, groups, errors."""

from __future__ import annotations

import csv
import shutil
from collections import Counter

import pytest

from embedcyto.datasets import bcfc, list_adapters, mlcc, open_dataset, sipakmed
from embedcyto.datasets.fixtures import GENERIC_CLASSES, make_fixture
from embedcyto.errors import DatasetError


def _per_class(dataset):
    return Counter(dataset.classes[r.label] for r in dataset.records)


def test_list_adapters_names_layouts():
    infos = {a.name: a for a in list_adapters()}
    assert set(infos) == {"sipakmed", "mlcc", "bcfc", "hicervix", "folder", "csv"}
    assert "CROPPED" in infos["sipakmed"].layout
    assert "Squamous cell carcinoma" in infos["mlcc"].layout
    assert all(a.description and a.layout for a in infos.values())


@pytest.mark.parametrize("nested", [False, True])
def test_sipakmed_reads_only_crops(tmp_path, nested):
    root = make_fixture("sipakmed", tmp_path / "sip", per_class=5, nested=nested)
    on_disk = list(root.rglob("*.bmp"))
    crops = [p for p in on_disk if p.parent.name == "CROPPED"]
    assert len(on_disk) > len(crops) and list(root.rglob("*.dat"))  # clusters and .dat exist
    ds = open_dataset("sipakmed", root)
    assert ds.classes == sipakmed.CLASSES
    assert _per_class(ds) == {c: 5 for c in sipakmed.CLASSES}
    assert sorted(r.path for r in ds.records) == sorted(p.relative_to(root).as_posix()
                                                       for p in crops)
    assert [r.path for r in ds.records] == sorted(r.path for r in ds.records)
    for rec in ds.records:
        cls = ds.classes[rec.label]
        assert rec.path.startswith(f"im_{cls}/") and "/CROPPED/" in rec.path
        assert rec.group == f"{cls}/{rec.path.rsplit('/', 1)[1][:3]}"
        assert rec.split in ("train", "val", "test")
    assert not ds.official_split and not ds.skipped


def test_sipakmed_skips_crop_with_unknown_cluster(tmp_path):
    root = make_fixture("sipakmed", tmp_path / "sip", per_class=3)
    odd = root / "im_Parabasal" / "CROPPED" / "cell.bmp"
    shutil.copy(next((root / "im_Parabasal" / "CROPPED").glob("*.bmp")), odd)
    ds = open_dataset("sipakmed", root)
    assert [p for p, _ in ds.skipped] == ["im_Parabasal/CROPPED/cell.bmp"]
    assert "NNN_MM" in ds.skipped[0][1]
    assert len(ds.records) == 15
    with pytest.raises(DatasetError, match="cell.bmp"):
        open_dataset("sipakmed", root, on_bad_image="error")


def test_sipakmed_wrong_layout_names_expected_and_found(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(DatasetError) as err:
        open_dataset("sipakmed", tmp_path)
    assert "expected folders im_Dyskeratotic" in str(err.value)
    assert "found: a, b" in str(err.value)


def test_sipakmed_root_one_level_too_high_gets_hint(tmp_path):
    make_fixture("sipakmed", tmp_path / "SIPaKMeD", per_class=3)
    with pytest.raises(DatasetError, match="did you mean `root=.*SIPaKMeD`"):
        open_dataset("sipakmed", tmp_path)
    from click.testing import CliRunner

    from embedcyto.cli.main import cli

    result = CliRunner().invoke(cli, ["datasets", "check", "--dataset", "sipakmed", "--root",
                                      str(tmp_path)])
    assert result.exit_code == 1
    assert f"did you mean --root {tmp_path / 'SIPaKMeD'}?" in result.output


def test_sipakmed_empty_class_and_missing_cropped(tmp_path):
    root = make_fixture("sipakmed", tmp_path / "sip", per_class=3)
    for bmp in (root / "im_Metaplastic" / "CROPPED").glob("*.bmp"):
        bmp.unlink()
    with pytest.raises(DatasetError, match="Metaplastic is empty"):
        open_dataset("sipakmed", root)
    shutil.rmtree(root / "im_Metaplastic" / "CROPPED")
    with pytest.raises(DatasetError, match="no CROPPED/ folder"):
        open_dataset("sipakmed", root)


def test_missing_root_is_a_clear_error(tmp_path):
    for adapter in ("sipakmed", "mlcc", "bcfc", "hicervix", "folder", "csv"):
        with pytest.raises(DatasetError, match="does not exist"):
            open_dataset(adapter, tmp_path / "nowhere")


def test_mlcc_long_folders_and_odd_file_names(tmp_path):
    root = make_fixture("mlcc", tmp_path / "mlcc", per_class=4)
    ds = open_dataset("mlcc", root)
    assert ds.classes == ("HSIL", "LSIL", "NILM", "SCC")
    assert _per_class(ds) == {c: 4 for c in mlcc.CLASSES}
    nilm = [r.path for r in ds.records if ds.classes[r.label] == "NILM"]
    assert "Negative for Intraepithelial malignancy/NL_1_ (1).jpg" in nilm
    assert all((root / r.path).is_file() for r in ds.records)


def test_mlcc_missing_class_folder(tmp_path):
    root = make_fixture("mlcc", tmp_path / "mlcc", per_class=2)
    shutil.rmtree(root / "Squamous cell carcinoma")
    with pytest.raises(DatasetError, match="missing 'Squamous cell carcinoma'"):
        open_dataset("mlcc", root)


def test_mlcc_empty_class_folder(tmp_path):
    root = make_fixture("mlcc", tmp_path / "mlcc", per_class=2)
    for jpg in (root / "Low squamous intra-epithelial lesion").iterdir():
        jpg.unlink()
    with pytest.raises(DatasetError, match="Low squamous.*contains no images"):
        open_dataset("mlcc", root)


def test_bcfc_folder_layout_any_case(tmp_path):
    root = make_fixture("bcfc", tmp_path / "bcfc", per_class=3)
    (root / "benign").rename(root / "Benign")
    ds = open_dataset("bcfc", root)
    assert ds.classes == bcfc.CLASSES
    assert _per_class(ds) == {"benign": 3, "malignant": 3}
    assert not ds.official_split


def test_bcfc_presplit_layout_is_official(tmp_path):
    root = make_fixture("bcfc", tmp_path / "bcfc", per_class=10, layout="presplit")
    (root / "train" / "notes.png").write_bytes(b"x")
    ds = open_dataset("bcfc", root, split_dir=tmp_path / "splits")
    assert ds.official_split
    assert not (tmp_path / "splits" / "splits.json").exists()
    for rec in ds.records:
        assert rec.path.split("/")[0] == rec.split
        assert rec.path.split("/")[1].startswith(ds.classes[rec.label])
    assert _per_class(ds) == {"benign": 10, "malignant": 10}
    assert ds.skipped == [("train/notes.png", ds.skipped[0][1])]


def test_bcfc_unrecognised_layout(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="not a BCFC root.*found: images"):
        open_dataset("bcfc", tmp_path)


@pytest.mark.parametrize("presplit", [False, True])
def test_folder_adapter(tmp_path, presplit):
    root = make_fixture("folder", tmp_path / "mydata", per_class=5, presplit=presplit)
    ds = open_dataset("folder", root)
    assert ds.name == "mydata"
    assert ds.classes == tuple(sorted(GENERIC_CLASSES))
    assert _per_class(ds) == {c: 5 for c in GENERIC_CLASSES}
    assert ds.official_split == presplit
    if presplit:
        assert all(r.path.startswith(r.split + "/") for r in ds.records)


def test_folder_empty_class_folder(tmp_path):
    root = make_fixture("folder", tmp_path / "d", per_class=2)
    (root / "empty_class").mkdir()
    with pytest.raises(DatasetError, match="empty_class contains no images"):
        open_dataset("folder", root)


def test_folder_mixing_split_and_class_folders(tmp_path):
    root = make_fixture("folder", tmp_path / "d", per_class=3, presplit=True)
    (root / "extra" / "x").mkdir(parents=True)
    with pytest.raises(DatasetError, match="mixes split folders"):
        open_dataset("folder", root)


def _write_csv(path, rows, header=("path", "label")):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.mark.parametrize("presplit", [False, True])
def test_csv_adapter(tmp_path, presplit):
    root = make_fixture("csv", tmp_path / "tab", per_class=4, presplit=presplit)
    ds = open_dataset("csv", root, name="tab")
    assert ds.classes == tuple(sorted(GENERIC_CLASSES))
    assert _per_class(ds) == {c: 4 for c in GENERIC_CLASSES}
    assert ds.official_split == presplit
    assert all(r.group is not None for r in ds.records)


def test_csv_custom_columns_levels_and_class_order(tmp_path):
    root = make_fixture("folder", tmp_path / "d", per_class=2)
    rows = []
    for p in sorted(root.rglob("*.png")):
        cls = p.parent.name
        coarse = "normal" if cls == "negative" else "abnormal"
        rows.append((p.relative_to(root).as_posix(), cls, coarse))
    _write_csv(root / "meta.csv", rows, header=("file", "diagnosis", "coarse"))
    ds = open_dataset("csv", root, csv_file="meta.csv", path_column="file",
                      label_column="diagnosis", level_columns="coarse,diagnosis",
                      classes="negative,low_grade,high_grade")
    assert ds.classes == ("negative", "low_grade", "high_grade")
    assert ds.level_names == ("coarse", "diagnosis")
    assert ds.label_spaces["coarse"].classes == ("abnormal", "normal")
    assert ds.level_maps["coarse"] == (1, 0, 0)
    assert ds.hierarchy == {"negative": "normal", "low_grade": "abnormal",
                            "high_grade": "abnormal"}
    for rec in ds.records:
        assert ds.label_spaces["diagnosis"].classes[rec.levels[1]] == ds.classes[rec.label]


@pytest.mark.parametrize("rows, message", [
    ([("../outside.png", "a")], "contains '..'"),
    ([("/etc/passwd", "a")], "absolute"),
    ([("x.png", "a"), ("x.png", "a")], "already listed on line 2"),
])
def test_csv_refuses_bad_paths(tmp_path, rows, message):
    (tmp_path / "x.png").write_bytes(b"")
    _write_csv(tmp_path / "labels.csv", rows)
    with pytest.raises(DatasetError, match=message) as err:
        open_dataset("csv", tmp_path)
    assert "labels.csv, line" in str(err.value)


def test_csv_refuses_symlink_escaping_root(tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.png").symlink_to(outside)
    _write_csv(root / "labels.csv", [("link.png", "a")])
    with pytest.raises(DatasetError, match="outside the dataset root"):
        open_dataset("csv", root)


def test_csv_missing_images_skip_or_error(tmp_path):
    root = make_fixture("csv", tmp_path / "tab", per_class=3)
    removed = sorted(root.glob("images/*.png"))[0]
    removed.unlink()
    ds = open_dataset("csv", root)
    assert [p for p, _ in ds.skipped] == [removed.relative_to(root).as_posix()]
    assert len(ds.records) == 8
    with pytest.raises(DatasetError, match="1 image\\(s\\) listed in the CSV are missing"):
        open_dataset("csv", root, on_bad_image="error")


def test_csv_malformed(tmp_path):
    _write_csv(tmp_path / "labels.csv", [("a.png",)], header=("path",))
    with pytest.raises(DatasetError, match="labels.csv, line 1: missing label column"):
        open_dataset("csv", tmp_path)
    _write_csv(tmp_path / "labels.csv", [("a.png", "a", "bogus")], header=("path", "label",
                                                                         "split"))
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="line 2: split 'bogus'"):
        open_dataset("csv", tmp_path)
    with pytest.raises(DatasetError, match="no column 'fold'"):
        open_dataset("csv", tmp_path, split_column="fold")


def test_unknown_adapter_and_option(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset adapter 'sipakmd'"):
        open_dataset("sipakmd", tmp_path)
    root = make_fixture("mlcc", tmp_path / "m", per_class=1)
    with pytest.raises(DatasetError, match="has no option csv_dir"):
        open_dataset("mlcc", root, csv_dir="x")


def test_bad_image_policy_is_validated(tmp_path):
    root = make_fixture("folder", tmp_path / "d", per_class=1)
    with pytest.raises(DatasetError, match="on_bad_image must be 'skip' or 'error'"):
        open_dataset("folder", root, on_bad_image="ignore")


def test_check_reports_classes_missing_from_a_split(tmp_path):
    from embedcyto.datasets import check_dataset

    root = make_fixture("mlcc", tmp_path / "m", per_class=4)
    nilm = root / mlcc.FOLDERS["NILM"]
    for i in range(6):
        shutil.copy(nilm / "NL_1_ (1).jpg", nilm / f"NL_9_ ({i}).jpg")
    report = check_dataset("mlcc", root)
    assert report.total == 22
    assert report.counts["NILM"] == {"train": 7, "val": 1, "test": 2}
    assert report.counts["SCC"] == {"train": 3, "val": 0, "test": 1}
    assert report.problems == ("no val images for class(es) HSIL, LSIL, SCC",)
    assert "problem: no val images for class(es) HSIL, LSIL, SCC" in report.lines()
