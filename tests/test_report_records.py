"""Reading probe rows and LoRA run folders into report records."""

from __future__ import annotations

import json

import pytest

from embedcyto.lora import runs as lora_runs
from embedcyto.report import records as R

FULL = {"dataset": "hicervix", "model": "uni", "method": "linear", "shots": None, "seed": 2,
        "options": {}, "metrics": {"accuracy": 0.61, "balanced_accuracy": 0.4, "macro_f1": 0.3},
        "levels": {"level_1": {"accuracy": 0.9, "n": 10}, "level_2": {"accuracy": 0.7},
                   "level_3": {"accuracy": 0.6}, "average": 0.7333}}
EPISODE = {"dataset": "sipakmed", "model": "clip", "method": "simpleshot", "shots": 4, "seed": 1,
           "options": {"metric": "l2"},
           "metrics": {"accuracy": 0.5, "balanced_accuracy": 0.45, "macro_f1": 0.4},
           "levels": {"level_1": {"accuracy": {"mean": 0.8, "ci": 0.01, "std": 0.1}},
                      "average": {"mean": 0.75, "ci": 0.01, "std": 0.1}}}


def test_full_data_probe_row():
    r = R.probe_record(FULL, "f:1")
    assert (r["dataset"], r["model"], r["method"], r["shots"], r["seed"]) == \
        ("hicervix", "uni", "linear", None, 2)
    assert r["accuracy"] == 0.61 and r["balanced_accuracy"] == 0.4
    assert r["levels"] == {"level_1": 0.9, "level_2": 0.7, "level_3": 0.6, "average": 0.7333}
    assert r["fraction"] is None and r["variant"] == "{}"


def test_episode_row_levels_take_the_episode_mean():
    r = R.probe_record(EPISODE)
    assert r["levels"] == {"level_1": 0.8, "average": 0.75}
    assert json.loads(r["variant"]) == {"metric": "l2"}


def test_row_without_metrics_is_a_clear_error():
    with pytest.raises(R.ReportError, match="not a probe results row"):
        R.probe_record({"dataset": "x"}, "bad.jsonl:3")


def _write_run(root, dataset, model, mode, seed, acc, *, shots=None, fraction=None,
               complete=True, levels=None):
    folder = root / "lora" / dataset / model / mode / f"seed-{seed}"
    folder.mkdir(parents=True)
    config = {"config": {"model": model, "dataset": dataset, "shots": shots,
                         "fraction": fraction, "seed": seed, "device": "cpu",
                         "settings": {"rank": 2}, "lr": 0.001}}
    metrics = {"test": {"accuracy": acc, "balanced_accuracy": acc, "macro_f1": acc},
               "iterations": 50}
    if levels:
        metrics["levels"] = levels
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if complete:
        (folder / "COMPLETE").write_text("finished\n")
    return folder


def test_run_folder_names_match_the_lora_stage():
    assert (R.COMPLETE, R.CONFIG_FILE, R.METRICS_FILE) == \
        (lora_runs.COMPLETE, lora_runs.CONFIG_FILE, lora_runs.METRICS_FILE)


def test_lora_runs_loaded_unfinished_listed(tmp_path):
    _write_run(tmp_path, "bcfc", "clip", "shots-4", 1, 0.8, shots=4)
    _write_run(tmp_path, "hicervix", "clip-l14", "frac-10", 1, 0.5, fraction=10.0,
               levels={"level_1": {"accuracy": 0.9}, "average": 0.7})
    unfinished = _write_run(tmp_path, "bcfc", "clip", "shots-8", 1, 0.9, shots=8,
                            complete=False)
    (tmp_path / "lora" / "bcfc" / "clip" / "shots-4" / ".seed-2.tmp-123").mkdir()
    loaded = R.load_lora_records(tmp_path)
    got = sorted((r["dataset"], r["shots"], r["fraction"], r["accuracy"]) for r in loaded.records)
    assert got == [("bcfc", 4, None, 0.8), ("hicervix", None, 10.0, 0.5)]
    assert [p for p, _ in loaded.skipped] == [str(unfinished)]
    lv = next(r for r in loaded.records if r["dataset"] == "hicervix")["levels"]
    assert lv == {"level_1": 0.9, "average": 0.7}
    assert all(r["method"] == "lora" for r in loaded.records)


def test_lora_variant_ignores_runtime_fields(tmp_path):
    a = R.lora_record({"config": {"model": "m", "dataset": "d", "seed": 1, "device": "cpu",
                                  "lr": 0.1}}, {"test": {"accuracy": 1, "balanced_accuracy": 1,
                                                         "macro_f1": 1}})
    b = R.lora_record({"config": {"model": "m", "dataset": "d", "seed": 2, "device": "cuda",
                                  "lr": 0.1}}, {"test": {"accuracy": 1, "balanced_accuracy": 1,
                                                         "macro_f1": 1}})
    assert a["variant"] == b["variant"]


def test_load_probe_records_reads_every_file_and_names_bad_lines(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps(FULL) + "\n\n" + json.dumps(EPISODE) + "\n")
    assert len(R.load_probe_records(tmp_path).records) == 2
    assert R.load_probe_records(tmp_path / "missing").records == []
    (tmp_path / "b.jsonl").write_text("{not json\n")
    with pytest.raises(R.ReportError, match=r"b\.jsonl:1 is not JSON"):
        R.load_probe_records(tmp_path)
