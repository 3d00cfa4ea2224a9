"""Generated fixtures: exact layouts, deterministic bytes, real sizes, a learnable class signal."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from embedcyto.datasets import open_dataset, read_image
from embedcyto.datasets.fixtures import make_fixture
from embedcyto.errors import DatasetError


def _digest(root):
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


@pytest.mark.parametrize("adapter", ["sipakmed", "mlcc", "bcfc", "folder", "csv"])
def test_deterministic_for_a_seed(tmp_path, adapter):
    a = _digest(make_fixture(adapter, tmp_path / "a", per_class=3, seed=1))
    b = _digest(make_fixture(adapter, tmp_path / "b", per_class=3, seed=1))
    c = _digest(make_fixture(adapter, tmp_path / "c", per_class=3, seed=2))
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_hicervix_rows_come_from_real_csvs_deterministically(tmp_path):
    a = make_fixture("hicervix", tmp_path / "a", per_class=2, seed=0)
    b = make_fixture("hicervix", tmp_path / "b", per_class=2, seed=0)
    c = make_fixture("hicervix", tmp_path / "c", per_class=2, seed=1)
    assert (a / "test.csv").read_text() == (b / "test.csv").read_text()
    assert (a / "test.csv").read_text() != (c / "test.csv").read_text()
    assert len(open_dataset("hicervix", a).records) == 26 * 2 * 3


@pytest.mark.parametrize("adapter, size, fmt", [
    ("bcfc", (256, 192), "PNG"),
    ("mlcc", (2048, 1536), "JPEG"),
])
def test_real_fixed_sizes(tmp_path, adapter, size, fmt):
    root = make_fixture(adapter, tmp_path / adapter, per_class=1, image_size="real")
    for rec in open_dataset(adapter, root).records:
        with Image.open(root / rec.path) as img:
            assert img.size == size and img.format == fmt


@pytest.mark.parametrize("adapter, low, high, fmt", [
    ("sipakmed", 100, 250, "BMP"),
    ("hicervix", 150, 250, "JPEG"),
])
def test_real_variable_sizes(tmp_path, adapter, low, high, fmt):
    root = make_fixture(adapter, tmp_path / adapter, per_class=1, image_size="real")
    sizes = set()
    for rec in open_dataset(adapter, root).records:
        with Image.open(root / rec.path) as img:
            assert low <= min(img.size) and max(img.size) <= high and img.format == fmt
            sizes.add(img.size)
    assert len(sizes) > 1


def test_default_and_int_sizes(tmp_path):
    root = make_fixture("folder", tmp_path / "d", per_class=1)
    assert {read_image(p).size for p in root.rglob("*.png")} == {(64, 64)}
    root = make_fixture("folder", tmp_path / "e", per_class=1, image_size=40)
    assert {read_image(p).size for p in root.rglob("*.png")} == {(40, 40)}


def test_images_carry_a_learnable_class_signal(tmp_path):
    from sklearn.linear_model import LogisticRegression

    root = make_fixture("sipakmed", tmp_path / "s", per_class=12, seed=3)
    ds = open_dataset("sipakmed", root, seed=0)
    x = np.stack([np.asarray(read_image(root / r.path).resize((16, 16))).ravel() / 255.0
                  for r in ds.records])
    y = np.array([r.label for r in ds.records])
    train = np.array([r.split == "train" for r in ds.records])
    model = LogisticRegression(max_iter=2000).fit(x[train], y[train])
    accuracy = (model.predict(x[~train]) == y[~train]).mean()
    assert accuracy >= 0.8  # chance is 0.2


def test_bad_fixture_requests(tmp_path):
    with pytest.raises(DatasetError, match="no fixture for adapter"):
        make_fixture("imagenet", tmp_path)
    with pytest.raises(DatasetError, match="has no option layout"):
        make_fixture("mlcc", tmp_path, layout="presplit")
    with pytest.raises(DatasetError, match="image_size"):
        make_fixture("mlcc", tmp_path, image_size="huge")
    with pytest.raises(DatasetError, match="per_class"):
        make_fixture("mlcc", tmp_path, per_class=0)
