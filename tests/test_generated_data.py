"""Generated images are flagged from the fixture's marker to every figure of the report."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from embedcyto import extract as ex
from embedcyto.datasets import open_dataset
from embedcyto.datasets.fixtures import make_fixture
from embedcyto.datasets.generated import GENERATED_MARKER, is_generated
from embedcyto.errors import StaleStoreError
from embedcyto.probes.runner import ProbeGridConfig, run_probe_grid
from embedcyto.report.build import build_report
from embedcyto.store import load_features
from embedcyto.store import provenance as prov

FP32 = ex.ExtractConfig(batch_size=8, num_workers=0, device="cpu", precision="fp32",
                        progress=False)
GRID = {"methods": ("simpleshot",), "shots": (1, 2), "seeds": (1, 2), "episodes": 5}


def _warning(path):
    with Image.open(path) as image:
        return image.info.get("Warning")


def _store(tmp_path, *, marker=True):
    root = make_fixture("bcfc", tmp_path / "data", per_class=6)
    if not marker:
        (root / GENERATED_MARKER).unlink()
    cache = tmp_path / "cache"
    dataset = open_dataset("bcfc", root, split_dir=cache / "bcfc")
    result = ex.extract_features(dataset, "tiny-vit", store_dir=cache,
                                 split_dir=cache / "bcfc", config=FP32)
    return root, cache, result.path


def _report(tmp_path, cache):
    rows = run_probe_grid(ProbeGridConfig(store_dir=cache, results_dir=tmp_path / "res", **GRID))
    return rows, build_report(tmp_path / "res", tmp_path / "runs", tmp_path / "report")


def test_a_fixture_carries_the_marker_and_every_adapter_sees_it(tmp_path):
    for adapter in ("sipakmed", "folder"):
        root = make_fixture(adapter, tmp_path / adapter, per_class=2, seed=3)
        marker = json.loads((root / GENERATED_MARKER).read_text())
        assert marker["adapter"] == adapter and marker["seed"] == 3
        dataset = open_dataset(adapter, root, split_dir=tmp_path / "splits" / adapter)
        assert dataset.generated and GENERATED_MARKER not in {r.path for r in dataset.records}
    assert not is_generated(tmp_path) and not is_generated(None)


def test_generated_data_is_flagged_from_the_store_to_every_figure(tmp_path):
    _, cache, path = _store(tmp_path)
    assert load_features(path).provenance["generated_data"] is True
    rows, report = _report(tmp_path, cache)
    assert rows and all(r["generated_data"] is True for r in rows)
    assert report.figures
    for fig in report.figures:  # random weights and generated data, said apart
        for text in (fig.warning, _warning(fig.path)):
            assert "generated data (bcfc)" in text and "random-weight models (tiny-vit)" in text
    markdown = report.markdown.read_text()
    assert "**Generated data (bcfc)" in markdown and "Random-weight models" in markdown


def test_real_looking_data_without_the_marker_gets_no_generated_data_warning(tmp_path):
    _, cache, path = _store(tmp_path, marker=False)
    assert load_features(path).provenance["generated_data"] is False
    rows, report = _report(tmp_path, cache)
    assert all(r["generated_data"] is False for r in rows)
    for fig in report.figures:  # random weights are still said
        assert "random-weight" in _warning(fig.path) and "generated" not in _warning(fig.path)
    assert "enerated data" not in report.markdown.read_text()


def _row(model, seed, shots, generated=None):
    row = {"dataset": "mlcc", "model": model, "method": "simpleshot", "shots": shots,
           "seed": seed, "options": {},
           "metrics": {"accuracy": 0.6, "balanced_accuracy": 0.6, "macro_f1": 0.6}}
    return row if generated is None else {**row, "generated_data": generated}


def test_real_weights_on_generated_data_still_carry_the_warning(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    rows = [_row("clip", s, k, generated=True) for s in (1, 2) for k in (1, 2)]
    (results / "mlcc.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = build_report(results, tmp_path / "runs", tmp_path / "report")
    assert report.figures
    for fig in report.figures:
        assert "generated data (mlcc)" in _warning(fig.path)
        assert "random-weight" not in _warning(fig.path)
    assert "**Generated data (mlcc)" in report.markdown.read_text()


def test_rows_and_runs_written_before_the_flag_read_as_real_data():
    from embedcyto.report.records import lora_record, probe_record

    assert probe_record(_row("clip", 1, 1))["generated_data"] is False
    run = {"config": {"model": "clip", "dataset": "mlcc", "shots": 1, "seed": 1}}
    metrics = {"test": {"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_f1": 0.5}}
    assert lora_record(run, metrics)["generated_data"] is False
    assert lora_record({**run, "generated_data": True}, metrics)["generated_data"] is True


def test_an_old_store_without_the_key_is_not_stale_but_a_changed_flag_is():
    old = {"model": "clip", "dataset_fingerprint": "f"}
    assert prov.differences(old, {**old, "generated_data": False}) == []
    assert prov.differences(old, {**old, "generated_data": True}) == [
        ("generated_data", False, True)]
    assert not prov.is_generated_data(old)


def test_removing_the_marker_after_extraction_makes_the_store_stale(tmp_path):
    root, cache, path = _store(tmp_path)
    (root / GENERATED_MARKER).unlink()
    dataset = open_dataset("bcfc", root, split_dir=cache / "bcfc")
    assert not dataset.generated
    with pytest.raises(StaleStoreError, match="generated_data: true -> false"):
        ex.extract_features(dataset, "tiny-vit", store_dir=cache, split_dir=cache / "bcfc",
                            config=FP32)
    assert load_features(path).provenance["generated_data"] is True  # the store keeps its flag


def test_a_writer_cannot_record_a_generated_dataset_as_real(tmp_path):
    from embedcyto.store.writer import complete_provenance

    root = make_fixture("folder", tmp_path / "data", per_class=3)
    dataset = open_dataset("folder", root, split_dir=tmp_path / "splits")
    full = complete_provenance(tmp_path / "x.h5", dataset, {"generated_data": False},
                               embed_dim=4, dtype="float32")
    assert full["generated_data"] is True
