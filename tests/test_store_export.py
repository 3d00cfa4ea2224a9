"""Listing stores, describing one, and exporting to npz / csv."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_store_fixtures import (
    CLASSES,
    LEVEL_1,
    LEVEL_2,
    LEVEL_NAMES,
    make_dataset,
    make_features,
    provenance,
    write_full,
)

from embedcyto.errors import StoreError
from embedcyto.store import (
    export_store,
    list_stores,
    load_features,
    open_writer,
    store_info,
    store_path,
)


@pytest.fixture()
def store(tmp_path):
    ds = make_dataset(11, levels=True)
    path = store_path(tmp_path, ds.name, "m")
    feats = write_full(path, ds)
    return path, ds, feats


def test_list_stores_shows_complete_partial_and_damaged(tmp_path, store):
    path, _, _ = store
    ds = make_dataset(9)
    with open_writer(
        store_path(tmp_path, "other", "uni"), dataset=ds, provenance=provenance(), embed_dim=8
    ) as w:
        w.write([0, 1, 2, 3], make_features(4))
    (tmp_path / "toy" / "junk.h5").write_text("no")
    (tmp_path / "toy" / "splits.json").write_text("{}")
    infos = {(i.dataset, i.model): i for i in list_stores(tmp_path)}
    assert set(infos) == {("toy", "m"), ("other", "uni"), ("toy", "junk")}
    done = infos[("toy", "m")]
    assert (done.state, done.rows, done.dim, done.dtype) == ("complete", 11, 8, "float32")
    assert done.size_bytes == path.stat().st_size and done.created_at
    part = infos[("other", "uni")]
    assert (part.state, part.rows_done, part.rows, part.status) == (
        "partial",
        4,
        9,
        "partial 4/9 rows",
    )
    assert infos[("toy", "junk")].status.startswith("damaged: ")
    assert "`force=True`" in infos[("toy", "junk")].status
    assert list_stores(tmp_path / "absent") == []


def test_store_info_describes_arrays_and_provenance(store, tmp_path):
    path, _, _ = store
    info = store_info(path)
    assert info["state"] == "complete" and info["n_rows"] == 11 and info["format_version"] == 1
    assert info["arrays"]["features"] == "float32 [11, 8]"
    assert info["arrays"]["image_id"] == "utf-8 string [11]"
    assert info["provenance"]["weights_sha256"] == "ab" * 32
    json.dumps(info)  # printable as JSON by the CLI
    with pytest.raises(StoreError, match="no feature store"):
        store_info(tmp_path / "toy" / "nope.h5")


def test_export_npz_round_trip(store, tmp_path):
    path, ds, feats = store
    out = export_store(path, tmp_path / "all.npz")
    with np.load(out, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["X"], feats)
        assert data["ids"].tolist() == [r.path for r in ds.records]
        assert data["labels"].tolist() == [r.label for r in ds.records]
        assert data["splits"].tolist() == [r.split for r in ds.records]
        assert tuple(data["classes"].tolist()) == CLASSES
        assert tuple(data["level_names"].tolist()) == LEVEL_NAMES
        assert data["levels"].tolist() == [list(r.levels) for r in ds.records]
        assert tuple(data["label_space__level_1"].tolist()) == LEVEL_1
        assert json.loads(str(data["provenance"]))["model"] == "m"
    test = export_store(path, tmp_path / "test.npz", split="test")
    with np.load(test) as data:
        assert set(data["splits"].tolist()) == {"test"} and len(data["X"]) == sum(
            r.split == "test" for r in ds.records
        )


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_export_csv_round_trip(tmp_path, dtype):
    ds = make_dataset(11, levels=True)
    path = store_path(tmp_path, ds.name, "m")
    feats = write_full(path, ds, dtype=dtype).astype(dtype)
    out = export_store(path, tmp_path / "all.csv", format="csv")
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 11
    assert list(rows[0])[:9] == [
        "id",
        "label",
        "class",
        "split",
        "group",
        "level_1",
        "level_1_class",
        "level_2",
        "level_2_class",
    ]
    for rec, row, x in zip(ds.records, rows, feats):
        assert (
            row["id"] == rec.path
            and int(row["label"]) == rec.label
            and row["class"] == CLASSES[rec.label]
        )
        assert row["split"] == rec.split and row["group"] == (rec.group or "")
        assert int(row["level_2"]) == rec.levels[1]
        assert row["level_2_class"] == (LEVEL_2[rec.levels[1]] if rec.levels[1] >= 0 else "")
        got = np.array([float(row[f"f{j}"]) for j in range(8)]).astype(dtype)
        np.testing.assert_array_equal(got, x)  # exact: enough digits are written


def test_export_refuses_to_overwrite_and_bad_format(store, tmp_path):
    path, _, _ = store
    out = tmp_path / "x.npz"
    out.write_bytes(b"keep me")
    with pytest.raises(StoreError, match="already exists; pass `overwrite=True`"):
        export_store(path, out)
    assert out.read_bytes() == b"keep me"
    export_store(path, out, overwrite=True)
    assert len(load_features(path).X) == len(np.load(out)["X"])
    with pytest.raises(StoreError, match="format must be one of"):
        export_store(path, tmp_path / "x.parquet", format="parquet")
    with pytest.raises(StoreError, match="does not exist"):
        export_store(path, tmp_path / "nodir" / "x.npz")
