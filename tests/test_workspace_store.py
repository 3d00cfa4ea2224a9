"""Stores seen through the workspace: status of every (dataset, model), import of outside
features (same probe rows as extracting them), export of every store."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from killed_extraction import kill_extraction_after

import embedcyto
from embedcyto.cli.main import cli
from embedcyto.datasets.fixtures import make_fixture
from embedcyto.errors import StoreError
from embedcyto.extract import ExtractConfig, extract_features
from embedcyto.probes.runner import ProbeGridConfig, run_probe_grid
from embedcyto.store import export_store, load_features
from embedcyto.store.importer import import_features
from embedcyto.workspace import DatasetEntry, load_workspace, save_workspace
from embedcyto.workspace.datasets import open_entry
from embedcyto.workspace.status import workspace_status
from embedcyto.workspace.study import empty_workspace

FAST = ExtractConfig(batch_size=16, num_workers=0, device="cpu", precision="fp32",
                     progress=False)


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A workspace folder with one folder-layout dataset ``cells`` and tiny-clip as default."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EMBEDCYTO_WORKSPACE", raising=False)
    make_fixture("folder", tmp_path / "data" / "cells", per_class=12)
    workspace = empty_workspace(tmp_path).with_dataset(
        DatasetEntry(name="cells", layout="folder", root="data/cells")).with_models(["tiny-clip"])
    save_workspace(workspace, tmp_path / "embedcyto.toml")
    return load_workspace(tmp_path / "embedcyto.toml")


def extract(ws, name, model):
    dataset, split_dir = open_entry(ws.dataset(name), ws, ws.folder("store"))
    return extract_features(dataset, model, store_dir=ws.folder("store"), split_dir=split_dir,
                            config=FAST)


def test_load_features_finds_the_store_through_the_workspace(ws):
    extract(ws, "cells", "tiny-clip")
    feats = embedcyto.load_features("cells", "tiny-clip")
    assert feats.dataset == "cells" and len(feats) == 36
    assert embedcyto.load_features(dataset="cells", model="tiny-clip").X.shape == feats.X.shape


def _exported(ws, tmp_path):
    extract(ws, "cells", "tiny-clip")
    out = tmp_path / "outside.npz"
    export_store(ws.folder("store") / "cells" / "tiny-clip.h5", out)
    return out


def _probe(ws, model):
    rows = run_probe_grid(ProbeGridConfig(
        store_dir=ws.folder("store"), datasets=("cells",), models=(model,),
        methods=("linear", "knn", "simpleshot"), shots=(1, 2), seeds=(1, 2), episodes=30,
        n_jobs=1, results_dir=ws.folder("results") / "probe"))
    return {(r["method"], r["shots"], r["seed"]): r["metrics"] for r in rows}


def test_imported_features_give_the_same_probe_rows_as_extracted_ones(ws, tmp_path):
    source = _exported(ws, tmp_path)
    # shuffle the rows and give class names: import puts them back in the dataset's order
    data = dict(np.load(source))
    order = np.random.default_rng(0).permutation(len(data["ids"]))
    names = data["classes"][data["labels"]]
    shuffled = tmp_path / "shuffled.npz"
    np.savez(shuffled, features=data["X"][order], ids=data["ids"][order],
             labels=names[order], splits=data["splits"][order])
    dataset, split_dir = open_entry(ws.dataset("cells"), ws, ws.folder("store"))
    path = import_features(shuffled, dataset, model="ext-clip", store_dir=ws.folder("store"),
                           split_dir=split_dir)
    imported = load_features(path)
    assert imported.provenance["source"] == "imported"
    assert imported.provenance["imported_from"].endswith("shuffled.npz")
    np.testing.assert_array_equal(imported.X, load_features(source.parent / "cache" / "cells"
                                                            / "tiny-clip.h5").X)
    assert _probe(ws, "ext-clip") == _probe(ws, "tiny-clip")


@pytest.mark.parametrize("change, message", [
    ("split", "disagree with dataset 'cells' on splits"),
    ("label", "disagree with dataset 'cells' on labels"),
    ("nan", "NaN or infinite"),
    ("drop", "1 missing"),
    ("shape", "2-D array"),
])
def test_import_refuses_features_that_disagree_with_the_dataset(ws, tmp_path, change, message):
    data = dict(np.load(_exported(ws, tmp_path)))
    X, ids, labels, splits = data["X"].copy(), data["ids"], data["labels"].copy(), \
        data["splits"].copy()
    if change == "split":
        splits[0] = "test" if splits[0] != "test" else "train"
    elif change == "label":
        labels[0] = (labels[0] + 1) % 3
    elif change == "nan":
        X[3, 1] = np.nan
    elif change == "drop":
        X, ids, labels, splits = X[1:], ids[1:], labels[1:], splits[1:]
    else:
        X = X[:, 0]
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=X, ids=ids, labels=labels, splits=splits)
    result = CliRunner().invoke(cli, ["store", "import", str(bad), "--dataset", "cells",
                                      "--model", "ext-clip"])
    assert result.exit_code == 1 and message in result.output, result.output
    assert not (ws.folder("store") / "cells" / "ext-clip.h5").exists()


def test_import_from_h5_through_the_cli_and_card_names_refused(ws, tmp_path):
    import h5py

    data = dict(np.load(_exported(ws, tmp_path)))
    with h5py.File(tmp_path / "lab.h5", "w") as f:
        f["X"] = data["X"]
        f["ids"] = data["ids"].astype("S")
        f["labels"] = data["labels"]
        f["splits"] = data["splits"].astype("S")
    runner = CliRunner()
    card = runner.invoke(cli, ["store", "import", str(tmp_path / "lab.h5"), "--dataset", "cells",
                               "--model", "tiny-vit"])
    assert card.exit_code == 1 and "ext-tiny-vit" in card.output
    ok = runner.invoke(cli, ["store", "import", str(tmp_path / "lab.h5"), "--dataset", "cells",
                             "--model", "lab-feats"])
    assert ok.exit_code == 0, ok.output
    assert embedcyto.load_features("cells", "lab-feats").provenance["source"] == "imported"


def test_store_export_all_in_three_formats(ws, tmp_path):
    pd = pytest.importorskip("pandas")
    extract(ws, "cells", "tiny-clip")
    runner = CliRunner()
    for fmt in ("npz", "csv", "parquet"):
        result = runner.invoke(cli, ["store", "export", "--all", "--format", fmt,
                                     "--out", str(tmp_path / "out")])
        assert result.exit_code == 0, result.output
    feats = load_features(ws.folder("store") / "cells" / "tiny-clip.h5")
    table = pd.read_parquet(tmp_path / "out" / "cells" / "tiny-clip.parquet")
    np.testing.assert_array_equal(table[[f"f{j}" for j in range(feats.X.shape[1])]].to_numpy(),
                                  feats.X)
    assert table["id"].tolist() == feats.ids.tolist()
    csv = pd.read_csv(tmp_path / "out" / "cells" / "tiny-clip.csv")
    assert csv["split"].tolist() == feats.splits.tolist()
    assert np.load(tmp_path / "out" / "cells" / "tiny-clip.npz")["X"].shape == feats.X.shape
    again = runner.invoke(cli, ["store", "export", "--all", "--out", str(tmp_path / "out")])
    assert again.exit_code == 1 and "--overwrite" in again.output


@pytest.mark.slow
def test_status_shows_complete_partial_stale_and_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_fixture("sipakmed", tmp_path / "data" / "sipakmed", per_class=6)
    make_fixture("folder", tmp_path / "data" / "cells", per_class=8)
    ws = empty_workspace(tmp_path).with_models(["tiny-clip", "tiny-vit"])
    for name, layout in (("sipakmed", "sipakmed"), ("cells", "folder")):
        ws = ws.with_dataset(DatasetEntry(name=name, layout=layout, root=f"data/{name}"))
    save_workspace(ws, tmp_path / "embedcyto.toml")
    ws = load_workspace(tmp_path / "embedcyto.toml")
    extract(ws, "sipakmed", "tiny-clip")
    store = ws.folder("store")
    kill_extraction_after(1, store / "sipakmed" / "tiny-vit.h5.partial",
                          root=tmp_path / "data" / "sipakmed", split_dir=store / "sipakmed",
                          store=store, model="tiny-vit")
    extract(ws, "cells", "tiny-clip")
    first, second = sorted((tmp_path / "data" / "cells").rglob("*.png"))[:2]
    shutil.copy(second, first)  # an image replaced since extraction: same names, new content

    status = workspace_status(ws)
    assert status.cell("sipakmed", "tiny-clip").store == "complete"
    partial = status.cell("sipakmed", "tiny-vit").store
    assert partial.startswith("partial ") and partial.endswith("/30")
    assert status.cell("cells", "tiny-clip").store.startswith("stale (")
    assert status.cell("cells", "tiny-vit").store == "missing"
    assert "dataset_fingerprint" in status.cell("cells", "tiny-clip").store

    result = CliRunner().invoke(cli, ["status"])
    assert result.exit_code == 0, result.output
    lines = {tuple(line.split()[:2]): line for line in result.output.splitlines()}
    assert "complete" in lines[("sipakmed", "tiny-clip")]
    assert "partial" in lines[("sipakmed", "tiny-vit")]
    assert "stale" in lines[("cells", "tiny-clip")]
    assert "missing" in lines[("cells", "tiny-vit")]

    (store / "cells" / "tiny-vit.h5").write_bytes(b"not a store")
    assert workspace_status(ws).cell("cells", "tiny-vit").store.startswith("damaged (")
    shutil.copy(first, first.with_name("added.png"))  # an image added: the split is out of date
    assert workspace_status(ws).cell("cells", "tiny-clip").store.startswith("stale (")
