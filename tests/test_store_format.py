"""The on-disk format read with plain h5py, and the reader's round trip and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from store_damage import make_legacy
from test_store_fixtures import (
    CLASSES,
    HIERARCHY,
    LEVEL_1,
    LEVEL_2,
    LEVEL_MAPS,
    LEVEL_NAMES,
    make_dataset,
    provenance,
    write_full,
)

from embedcyto.errors import StoreError
from embedcyto.store import FORMAT_NAME, FORMAT_VERSION, load_features, open_writer, store_path


@pytest.fixture()
def hier_store(tmp_path):
    ds = make_dataset(23, levels=True)
    path = store_path(tmp_path, ds.name, "toymodel")
    feats = write_full(path, ds)
    return path, ds, feats


def test_every_documented_field_reads_with_plain_h5py(hier_store):
    path, ds, feats = hier_store
    with h5py.File(path, "r") as f:
        a = f.attrs
        assert a["format"] == FORMAT_NAME and a["format_version"] == FORMAT_VERSION
        assert bool(a["complete"]) is True
        assert a["n_rows"] == 23 and a["embed_dim"] == 8 and a["dtype"] == "float32"
        assert a["dataset"] == "toy" and a["model"] == "toymodel"
        assert (
            a["weights_sha256"] == "ab" * 32 and a["precision"] == "fp32" and a["device"] == "cpu"
        )
        assert json.loads(a["card"])["family"] == "timm"
        assert json.loads(a["preprocessing"])["size"] == 224
        assert json.loads(a["versions"])["torch"] == "2.13.0"
        assert a["split_hash"] == "cd" * 32
        assert len(a["dataset_fingerprint"]) == 64 and len(a["rows_sha256"]) == 64
        assert a["created_at"].endswith("+00:00")
        assert json.loads(a["note"]) is None
        assert set(json.loads(a["json_attrs"])) == {"card", "preprocessing", "versions", "note"}
        assert "weights_sha256" in json.loads(a["provenance_keys"])

        X = f["features"]
        assert X.dtype == np.float32 and X.shape == (23, 8) and X.chunks == (23, 8)
        assert X.compression is None
        np.testing.assert_array_equal(X[()], feats)
        assert list(f["image_id"].asstr()[()]) == [r.path for r in ds.records]
        np.testing.assert_array_equal(f["label"][()], [r.label for r in ds.records])
        assert f["label"].dtype == np.int64
        assert list(f["split"].asstr()[()]) == [r.split for r in ds.records]
        assert list(f["group"].asstr()[()]) == [r.group or "" for r in ds.records]
        np.testing.assert_array_equal(f["levels"][()], [r.levels for r in ds.records])
        assert tuple(f["classes"].asstr()[()]) == CLASSES
        assert tuple(f["label_spaces/level_1"].asstr()[()]) == LEVEL_1
        assert tuple(f["label_spaces/level_2"].asstr()[()]) == LEVEL_2
        assert tuple(f["level_names"].asstr()[()]) == LEVEL_NAMES
        for name, mapping in LEVEL_MAPS.items():
            np.testing.assert_array_equal(f[f"level_maps/{name}"][()], mapping)
        pairs = zip(f["hierarchy/child"].asstr()[()], f["hierarchy/parent"].asstr()[()])
        assert dict(pairs) == HIERARCHY


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip(tmp_path, dtype):
    ds = make_dataset(23, levels=True)
    path = store_path(tmp_path, ds.name, "m")
    feats = write_full(path, ds, dtype=dtype)
    got = load_features(path)
    assert got.X.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got.X, feats.astype(dtype))
    assert got.ids.tolist() == [r.path for r in ds.records]
    assert got.labels.tolist() == [r.label for r in ds.records]
    assert got.splits.tolist() == [r.split for r in ds.records]
    assert got.groups.tolist() == [r.group or "" for r in ds.records]
    assert got.levels.tolist() == [list(r.levels) for r in ds.records]
    assert got.classes == CLASSES and got.level_names == LEVEL_NAMES
    assert got.label_spaces == {"level_1": LEVEL_1, "level_2": LEVEL_2}
    assert got.level_maps == LEVEL_MAPS and got.hierarchy == HIERARCHY
    assert got.provenance["card"] == provenance()["card"] and got.provenance["dtype"] == dtype
    assert got.dataset == "toy" and got.model == "m" and got.path == path
    with pytest.raises(ValueError):
        got.X[0, 0] = 1.0  # read-only arrays: a probe cannot corrupt shared features


def test_dataset_without_levels_has_no_level_arrays(tmp_path):
    ds = make_dataset(7)
    path = store_path(tmp_path, ds.name, "m")
    write_full(path, ds)
    with h5py.File(path, "r") as f:
        assert "levels" not in f and "level_names" not in f
    got = load_features(tmp_path, "toy", "m")
    assert got.levels is None and got.level_names == () and got.hierarchy == {}


def test_subset_and_split_argument(hier_store):
    path, ds, feats = hier_store
    test = load_features(path, split="test")
    want = [i for i, r in enumerate(ds.records) if r.split == "test"]
    assert test.ids.tolist() == [ds.records[i].path for i in want]
    np.testing.assert_array_equal(test.X, feats[want])
    assert test.levels.shape == (len(want), 2)
    assert load_features(path).subset("val").splits.tolist() == ["val"] * sum(
        r.split == "val" for r in ds.records
    )
    with pytest.raises(StoreError, match="unknown split 'tset'"):
        load_features(path, split="tset")


def test_mmap_maps_unfiltered_stores_and_falls_back_for_checksummed_or_compressed(tmp_path):
    ds = make_dataset(3000)  # three chunks of rows, each larger than HDF5's chunk cache
    plain = store_path(tmp_path, "toy", "plain")
    feats = write_full(plain, ds, dim=1024, batch=500)
    checked = load_features(plain, mmap=True)  # Fletcher-32 chunks cannot be mapped
    assert not isinstance(checked.X, np.memmap)
    np.testing.assert_array_equal(checked.X, feats)
    make_legacy(plain)  # as written before checksums: uncompressed chunks back to back
    mapped = load_features(plain, mmap=True)
    assert isinstance(mapped.X, np.memmap)
    np.testing.assert_array_equal(mapped.X, feats)
    gz = store_path(tmp_path, "toy", "gz")
    write_full(gz, ds, dim=1024, batch=500, compression="gzip")
    with h5py.File(gz, "r") as f:
        assert f["features"].compression == "gzip"
    got = load_features(gz, mmap=True)
    assert not isinstance(got.X, np.memmap)
    np.testing.assert_array_equal(got.X, feats)


def test_missing_store_lists_what_exists(tmp_path):
    write_full(store_path(tmp_path, "toy", "clip"), make_dataset(5))
    with pytest.raises(StoreError, match=r"no feature store .*toy/clip \(complete\)"):
        load_features(tmp_path, "toy", "uni")
    with pytest.raises(StoreError, match="also give the dataset and the model"):
        load_features(tmp_path)


def test_interrupted_store_is_refused_with_resume_hint(tmp_path):
    ds = make_dataset(10)
    path = store_path(tmp_path, "toy", "m")
    with open_writer(path, dataset=ds, provenance=provenance(), embed_dim=8) as w:
        w.write([0, 1], np.ones((2, 8), np.float32))
    with pytest.raises(
        StoreError, match=r"interrupted \(2/10 rows done\).*re-run the same `embedcyto extract`"
    ):
        load_features(path)


def test_incomplete_flag_is_refused(hier_store):
    path, _, _ = hier_store
    with h5py.File(path, "r+") as f:
        f.attrs["complete"] = False
    with pytest.raises(StoreError, match="incomplete.*re-run the same `embedcyto extract`"):
        load_features(path)


def test_foreign_files_are_refused_clearly(tmp_path, hier_store):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(StoreError, match="not a readable HDF5 file"):
        load_features(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(StoreError, match="not an embedcyto feature store"):
        load_features(other)
    path, _, _ = hier_store
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(StoreError, match="upgrade embedcyto"):
        load_features(path)


def test_dataset_and_model_are_checked_against_the_file(hier_store):
    path, ds, _ = hier_store
    assert len(load_features(path, ds, "toymodel")) == 23
    with pytest.raises(StoreError, match="holds model 'toymodel', not 'uni'"):
        load_features(path, "toy", "uni")


def test_plain_h5py_snippet_in_docs_runs(tmp_path, capsys):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "store.md").read_text(encoding="utf-8")
    snippet = doc.split("```python\n", 1)[1].split("```", 1)[0]
    path = store_path(tmp_path, "sipakmed", "quilt")
    write_full(path, make_dataset(9, name="sipakmed"))
    namespace: dict = {}
    exec(
        compile(snippet.replace("cache/sipakmed/quilt.h5", str(path)), "store.md", "exec"),
        namespace,
    )
    assert namespace["X"].shape == (9, 8) and namespace["train"].sum() == 4
    assert namespace["card"]["family"] == "timm" and "quilt" in capsys.readouterr().out


def test_store_modules_import_each_other_without_cycles():
    """integrity <- h5format <- catalog <- reader <- writer: no module imports one above it,
    not even inside a function."""
    import ast

    import embedcyto.store

    folder = Path(embedcyto.store.__file__).parent
    graph = {}
    for module in folder.glob("*.py"):
        if module.name == "__init__.py":
            continue
        deps = set()
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "embedcyto.store."):
                deps.add(node.module.split(".")[2])
        graph[module.stem] = deps

    def reaches(start, goal, seen=()):
        return any(d == goal or (d not in seen and reaches(d, goal, (*seen, d)))
                   for d in graph.get(start, ()))

    cycles = sorted(m for m in graph if reaches(m, m))
    assert cycles == []
    assert graph["integrity"] == set()
    assert not {"catalog", "reader", "writer"} & graph["h5format"]
    assert "reader" not in graph["catalog"]
