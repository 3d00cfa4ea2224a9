"""Integrity of stores: every kind of damage is caught with a clear error, --force recovers,
one damaged store never hides the others, older stores stay readable, non-finite values are
refused on the way in and on the way out."""

from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from store_damage import DAMAGES, make_legacy, put_value
from test_store_fixtures import make_dataset, make_features, provenance, write_full

from embedcyto.cli.main import cli
from embedcyto.errors import DamagedStoreError, ProbeError, StoreError
from embedcyto.store import (
    Features,
    list_stores,
    load_features,
    open_writer,
    store_path,
    validate_features,
    verify_store,
)

pytestmark = pytest.mark.reliability
N = 30
PROV = provenance()


def _store(tmp_path, model="m", n=N):
    ds = make_dataset(n)
    path = store_path(tmp_path, ds.name, model)
    feats = write_full(path, ds, prov=PROV)
    return path, ds, feats


def test_a_new_store_carries_checksums_and_verifies(tmp_path):
    path, _, _ = _store(tmp_path)
    with h5py.File(path, "r") as f:
        assert f["features"].fletcher32 and f["label"].fletcher32
        assert "integrity" in f.attrs
    result = verify_store(path)
    assert result.verified and (result.rows, result.dim) == (N, 8)


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_corrupted_store_is_refused_everywhere_and_force_recovers(tmp_path, damage):
    path, ds, feats = _store(tmp_path)
    DAMAGES[damage](path)
    for read in (verify_store, load_features):
        with pytest.raises(StoreError, match="`force=True`") as err:
            read(path)
        assert "Traceback" not in str(err.value)
    with pytest.raises(StoreError, match="`force=True`"):  # never a cache hit
        open_writer(path, dataset=ds, provenance=PROV, embed_dim=8)
    listed = list_stores(tmp_path)  # the listing itself never fails
    assert [i.model for i in listed] == ["m"]
    write_full(path, ds, prov=PROV, force=True)
    got = load_features(path)
    np.testing.assert_array_equal(got.X, feats)
    assert verify_store(path).verified


def test_one_damaged_store_is_listed_with_its_fix_and_others_still_work(tmp_path):
    good, _, feats = _store(tmp_path, "good")
    bad, _, _ = _store(tmp_path, "bad")
    DAMAGES["truncate"](bad)
    states = {i.model: i for i in list_stores(tmp_path)}
    assert states["good"].state == "complete"
    assert states["bad"].state == "damaged" and "`force=True`" in states["bad"].status
    np.testing.assert_array_equal(load_features(good).X, feats)
    runner = CliRunner()
    listing = runner.invoke(cli, ["store", "ls", "--store", str(tmp_path)])
    assert listing.exit_code == 0, listing.output
    assert "damaged" in listing.output and "`embedcyto extract` with --force" in listing.output
    checked = runner.invoke(cli, ["store", "verify", "--store", str(tmp_path)])
    assert checked.exit_code == 1
    assert f"ok  {good}" in checked.output and f"BAD {bad}" in checked.output
    assert "1 of 2 store(s) failed verification" in checked.output
    one = runner.invoke(cli, ["store", "verify", str(good)])
    assert one.exit_code == 0 and "verified" in one.output


def test_permuted_rows_pass_the_quick_check_but_never_a_read(tmp_path):
    path, _, _ = _store(tmp_path)
    DAMAGES["permute"](path)
    assert list_stores(tmp_path)[0].state == "complete"  # the cheap check reads no features
    with pytest.raises(DamagedStoreError, match="features changed after they were written"):
        load_features(path)


def test_store_written_before_checksums_is_readable_and_says_unverified(tmp_path, caplog):
    path, ds, feats = _store(tmp_path)
    make_legacy(path)
    with caplog.at_level(logging.WARNING):
        got = load_features(path)
    np.testing.assert_array_equal(got.X, feats)
    assert "unverified" in caplog.text and "`embedcyto extract` with `force=True`" in caplog.text
    assert not verify_store(path).verified
    info = list_stores(tmp_path)[0]
    assert info.state == "complete" and "unverified" in info.status
    with open_writer(path, dataset=ds, provenance=PROV, embed_dim=8) as w:
        assert w.is_cache_hit  # structure and values checked; nothing recomputed
    with h5py.File(path, "r+") as f:  # an older store with a NaN is still refused
        f["features"][3, 0] = np.nan
    with pytest.raises(DamagedStoreError, match=rf"1 row\(s\): 3 \({ds.records[3].path}\)"):
        load_features(path)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_in_a_store_are_an_error_naming_the_rows(tmp_path, value):
    path, ds, _ = _store(tmp_path)
    put_value(path, 7, value)  # checksums recomputed: only the value check can see it
    ident = ds.records[7].path
    for read in (load_features, verify_store):
        with pytest.raises(DamagedStoreError, match=rf"NaN or infinite.*7 \({ident}\)"):
            read(path)
    with pytest.raises(StoreError, match="Nothing was reused"):
        open_writer(path, dataset=ds, provenance=PROV, embed_dim=8)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_the_writer_refuses_non_finite_features_naming_the_images(tmp_path, value):
    ds = make_dataset(6)
    feats = make_features(6)
    feats[4, 2] = value
    with open_writer(store_path(tmp_path, "toy", "m"), dataset=ds, provenance=PROV,
                     embed_dim=8) as w:
        with pytest.raises(StoreError, match=rf"row\(s\) \[4\].*{ds.records[4].path}"):
            w.write(np.arange(6), feats)
        assert w.pending_rows().size == 6  # nothing of the batch was saved


def test_validate_features_checks_arrays_from_anywhere(tmp_path):
    path, _, _ = _store(tmp_path)
    good = load_features(path)
    assert validate_features(good) is good
    X = np.array(good.X)
    X[2, 0] = np.inf
    bad = Features(**{**good.__dict__, "X": X})
    with pytest.raises(DamagedStoreError, match=rf"2 \({good.ids[2]}\)"):
        validate_features(bad)
    short = Features(**{**good.__dict__, "labels": good.labels[:-1]})
    with pytest.raises(StoreError, match="labels has"):
        validate_features(short)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_probes_of_other_stores_run_beside_a_damaged_one(tmp_path, damage):
    from test_probes_runner import make_dataset as probe_dataset
    from test_probes_runner import write_store

    store = tmp_path / "cache"
    write_store(store, probe_dataset("other"), "alpha")
    bad = write_store(store, probe_dataset("toy"), "alpha")
    DAMAGES[damage](bad)
    args = ["probe", "--store", str(store), "--results", str(tmp_path / "res"),
            "--episodes", "5", "--shots", "1", "--seeds", "1", "--methods", "simpleshot"]
    runner = CliRunner()
    other = runner.invoke(cli, [*args, "--dataset", "other"])
    assert other.exit_code == 0, other.output
    assert (tmp_path / "res" / "other.jsonl").is_file()
    broken = runner.invoke(cli, [*args, "--dataset", "toy", "--model", "alpha"])
    assert broken.exit_code == 1 and "damaged" in broken.output
    assert "--force" in broken.output and "Traceback" not in broken.output


@pytest.mark.parametrize("damage", ["flip", "permute", "truncate"])
def test_a_plain_probe_reports_a_damaged_store_and_probes_the_others(tmp_path, damage):
    """Damage only a full read sees (flipped bytes, permuted rows) must not stop a probe of
    every store: the damaged one is named with its fix, the others are probed, exit code 1."""
    from test_probes_runner import make_dataset as probe_dataset
    from test_probes_runner import write_store

    from embedcyto.probes.runner import ProbeGridConfig, run_probe_grid

    store = tmp_path / "cache"
    write_store(store, probe_dataset("other"), "alpha")
    write_store(store, probe_dataset("toy"), "beta")
    bad = write_store(store, probe_dataset("toy"), "alpha")
    DAMAGES[damage](bad)
    args = ["probe", "--store", str(store), "--results", str(tmp_path / "res"),
            "--episodes", "5", "--shots", "1", "--seeds", "1", "--methods", "simpleshot"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert f"{bad}" in result.output and "damaged" in result.output
    assert "`embedcyto extract` with --force" in result.output
    assert "skipped 1 damaged store" in result.output
    rows = [json.loads(line) for name in ("other", "toy")
            for line in (tmp_path / "res" / f"{name}.jsonl").read_text().splitlines()]
    assert {(r["dataset"], r["model"]) for r in rows} == {("other", "alpha"), ("toy", "beta")}

    config = ProbeGridConfig(store_dir=store, methods=("simpleshot",), shots=(1,), seeds=(1,),
                             episodes=5, results_dir=tmp_path / "res2")
    got = run_probe_grid(config)
    assert {(r["dataset"], r["model"]) for r in got} == {("other", "alpha"), ("toy", "beta")}
    assert [(s.dataset, s.model, s.path) for s in got.skipped] == [("toy", "alpha", bad)]
    assert "`force=True`" in got.skipped[0].problem
    with pytest.raises(ProbeError, match=r"(?s)skipped 1 damaged store.*toy/alpha"):
        got.raise_for_skipped()  # what the CLI and the pipelines call once the rows are written

    DAMAGES[damage](store / "toy" / "beta.h5")  # a dataset with no usable store left
    got = run_probe_grid(config)
    assert {(r["dataset"], r["model"]) for r in got} == {("other", "alpha")}
    assert sorted(s.model for s in got.skipped) == ["alpha", "beta"]


def test_extraction_refuses_non_finite_features_naming_the_images(tmp_path, monkeypatch):
    from embedcyto import extract as ex
    from embedcyto.backbones.loaders import Backbone
    from embedcyto.datasets import open_dataset
    from embedcyto.datasets.fixtures import make_fixture

    root = make_fixture("sipakmed", tmp_path / "data", per_class=1)
    store = tmp_path / "cache"
    dataset = open_dataset("sipakmed", root, split_dir=store / "sipakmed")
    forward = Backbone.forward

    def nan_in_second_row(self, images):
        out = forward(self, images).clone()
        out[1, 0] = float("nan")
        return out

    monkeypatch.setattr(Backbone, "forward", nan_in_second_row)
    config = ex.ExtractConfig(batch_size=8, num_workers=0, device="cpu", precision="fp32",
                              progress=False)
    with pytest.raises(StoreError, match=rf"NaN or infinite.*{dataset.records[1].path}"):
        ex.extract_features(dataset, "tiny-vit", store_dir=store, split_dir=store / "sipakmed",
                            config=config)
    assert not store_path(store, "sipakmed", "tiny-vit").exists()
