"""``embedcyto store ls / info / export`` through click's test runner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_store_fixtures import make_dataset, make_features, provenance, write_full

from embedcyto.cli.main import cli
from embedcyto.store import open_writer, store_path


@pytest.fixture()
def stores(tmp_path):
    ds = make_dataset(11, levels=True)
    feats = write_full(store_path(tmp_path, "toy", "clip"), ds)
    with open_writer(
        store_path(tmp_path, "toy", "uni"), dataset=ds, provenance=provenance(), embed_dim=8
    ) as w:
        w.write([0, 1, 2], make_features(3))
    return tmp_path, ds, feats


def test_ls_lists_complete_and_partial(stores):
    folder, _, _ = stores
    result = CliRunner().invoke(cli, ["store", "ls", "--store", str(folder)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].split()[:3] == ["DATASET", "MODEL", "ROWS"]
    clip = next(line for line in lines if " clip " in line)
    assert clip.split()[2:5] == ["11", "8", "float32"] and clip.endswith("complete")
    assert next(line for line in lines if " uni " in line).endswith("partial 3/11 rows")


def test_ls_uses_env_store_and_reports_empty_folder(stores, tmp_path, monkeypatch):
    folder, _, _ = stores
    monkeypatch.setenv("EMBEDCYTO_STORE", str(folder))
    assert "clip" in CliRunner().invoke(cli, ["store", "ls"]).output
    result = CliRunner().invoke(cli, ["store", "ls", "--store", str(tmp_path / "empty")])
    assert result.exit_code == 0 and "no feature stores in" in result.output


def test_info_by_path_and_by_name(stores):
    folder, _, _ = stores
    path = store_path(folder, "toy", "clip")
    result = CliRunner().invoke(cli, ["store", "info", str(path)])
    assert result.exit_code == 0, result.output
    assert "state: complete" in result.output and "features: float32 [11, 8]" in result.output
    assert "weights_sha256: " + "ab" * 32 in result.output
    result = CliRunner().invoke(
        cli,
        ["store", "info", "--dataset", "toy", "--model", "clip", "--store", str(folder), "--json"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["provenance"]["model"] == "clip"


def test_info_errors_are_clean_messages(stores):
    folder, _, _ = stores
    result = CliRunner().invoke(
        cli, ["store", "info", "--dataset", "toy", "--model", "vit", "--store", str(folder)]
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "no feature store" in result.output and "toy/clip (complete)" in result.output
    result = CliRunner().invoke(cli, ["store", "info", "--store", str(folder)])
    assert result.exit_code != 0 and "also give the dataset and the model" in result.output
    partial = CliRunner().invoke(
        cli, ["store", "info", "--dataset", "toy", "--model", "uni", "--store", str(folder)]
    )
    assert partial.exit_code == 0 and "partial 3/11 rows" in partial.output


def test_export_npz_and_csv(stores, tmp_path):
    folder, ds, feats = stores
    out = tmp_path / "test.npz"
    args = ["store", "export", "--dataset", "toy", "--model", "clip", "--store", str(folder)]
    result = CliRunner().invoke(cli, args + ["--out", str(out), "--split", "test"])
    assert result.exit_code == 0, result.output
    want = [i for i, r in enumerate(ds.records) if r.split == "test"]
    np.testing.assert_array_equal(np.load(out)["X"], feats[want])
    again = CliRunner().invoke(cli, args + ["--out", str(out)])
    assert again.exit_code != 0 and "--overwrite" in again.output
    assert CliRunner().invoke(cli, args + ["--out", str(out), "--overwrite"]).exit_code == 0
    csv_out = tmp_path / "all.csv"
    result = CliRunner().invoke(
        cli, ["store", "export", str(store_path(folder, "toy", "clip")), "--out", str(csv_out)]
    )
    assert result.exit_code == 0, result.output
    assert (
        csv_out.read_text(encoding="utf-8").splitlines()[0].startswith("id,label,class,split,group")
    )


def test_export_of_interrupted_store_says_how_to_resume(stores, tmp_path):
    folder, _, _ = stores
    result = CliRunner().invoke(
        cli,
        [
            "store",
            "export",
            "--dataset",
            "toy",
            "--model",
            "uni",
            "--store",
            str(folder),
            "--out",
            str(tmp_path / "u.npz"),
        ],
    )
    assert result.exit_code != 0 and "re-run the same `embedcyto extract`" in result.output
