"""`embedcyto probe` through click's CliRunner on stores written by the store writer."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from embedcyto.cli.main import cli
from test_probes_runner import make_dataset, write_store


def test_probe_prints_a_table_and_writes_results(tmp_path):
    write_store(tmp_path / "cache", make_dataset(levels=True), "alpha")
    args = ["probe", "--store", str(tmp_path / "cache"), "--results", str(tmp_path / "res"),
            "--episodes", "10", "--shots", "1,2", "--seeds", "1,2",
            "--methods", "linear,simpleshot"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["dataset", "model", "method", "shots"]
    assert any(line.split()[:4] == ["toy", "alpha", "simpleshot", "2"] for line in lines)
    linear = next(line for line in lines if " linear " in line)
    assert "±0.0" in linear  # deterministic over seeds
    rows = [json.loads(x) for x in (tmp_path / "res" / "toy.jsonl").read_text().splitlines()]
    assert len(rows) == 2 + 4 and "toy.jsonl" in result.output


def test_probe_errors_are_one_clean_line(tmp_path):
    result = CliRunner().invoke(cli, ["probe", "--store", str(tmp_path / "empty"),
                                      "--results", str(tmp_path / "res")])
    assert result.exit_code != 0
    assert "no complete feature store" in result.output and "Traceback" not in result.output
    assert "give the folder holding the stores (--store DIR)" in result.output
    bad = CliRunner().invoke(cli, ["probe", "--methods", "svm", "--store", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown method" in bad.output
    bad = CliRunner().invoke(cli, ["probe", "--shots", "1,x", "--store", str(tmp_path)])
    assert bad.exit_code == 2 and "comma-separated integers" in bad.output


def test_bad_shots_fail_at_once_and_seed_is_an_alias(tmp_path, monkeypatch):
    from embedcyto.probes import runner

    monkeypatch.setattr(runner, "run_probe_grid", lambda config: pytest.fail("work started"))
    bad = CliRunner().invoke(cli, ["probe", "--shots", "0", "--store", str(tmp_path)])
    assert bad.exit_code == 2 and "every value must be at least 1" in bad.output
    monkeypatch.undo()
    write_store(tmp_path / "cache", make_dataset(), "alpha")
    ok = CliRunner().invoke(cli, ["probe", "--store", str(tmp_path / "cache"), "--results",
                                  str(tmp_path / "res"), "--methods", "knn", "--seed", "5"])
    assert ok.exit_code == 0, ok.output
    rows = [json.loads(x) for x in (tmp_path / "res" / "toy.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [5]


def test_help_documents_every_probe_option():
    text = CliRunner().invoke(cli, ["probe", "--help"]).output
    flat = " ".join(text.split())
    assert "$EMBEDCYTO_STORE" in flat and "Images per class of the few-shot episodes" in flat
    assert "one result row per seed" in flat and "--seeds, --seed" in flat
    assert "--centre [support|train]" in flat and "study_head: the study's AdamW" in flat


def test_table_columns_align_with_long_names_and_levels_only_where_present(tmp_path):
    long_name = "a-rather-long-model-name+lora-shots-16-s3"
    write_store(tmp_path / "cache", make_dataset(), long_name)
    result = CliRunner().invoke(cli, ["probe", "--store", str(tmp_path / "cache"), "--results",
                                      str(tmp_path / "res"), "--methods", "knn,simpleshot",
                                      "--shots", "1", "--episodes", "5", "--seeds", "1"])
    assert result.exit_code == 0, result.output
    table = result.output.split("\n\n")[0].splitlines()
    assert "level" not in table[0]  # no hierarchy, no empty level columns
    assert long_name in table[1]
    assert len({len(line) for line in table}) == 1  # numbers right-aligned under their header
    assert table[1].index(long_name) == table[0].index("model")


def test_probe_and_the_simpleshot_estimator_agree_episode_by_episode(tmp_path):
    import numpy as np

    from embedcyto.probes import SimpleShot, support_indices
    from embedcyto.store import load_features

    path = write_store(tmp_path / "cache", make_dataset(), "alpha", noise=2.5)
    base = ["probe", "--store", str(tmp_path / "cache"), "--results", str(tmp_path / "res"),
            "--methods", "simpleshot", "--shots", "2", "--seeds", "4", "--episodes", "12"]
    for centre in (None, "train"):
        result = CliRunner().invoke(cli, base + (["--centre", centre] if centre else []))
        assert result.exit_code == 0, result.output
    rows = {r["options"]["centre"]: r for r in map(
        json.loads, (tmp_path / "res" / "toy.jsonl").read_text().splitlines())}
    assert set(rows) == {"support", "train"}  # recorded, and both kept side by side
    f = load_features(path)
    train, test = np.asarray(f.splits) == "train", np.asarray(f.splits) == "test"
    X, y, ids = np.asarray(f.X)[train], np.asarray(f.labels)[train], np.asarray(f.ids)[train]
    for centre, row in rows.items():
        expected = []
        for episode in range(12):
            idx = support_indices(ids, y, 2, 4, episode, n_classes=len(f.classes))
            extra = {"X_unlabelled": X} if centre == "train" else {}
            est = SimpleShot().fit(X[idx], y[idx], **extra)
            expected.append(round(float(est.score(np.asarray(f.X)[test],
                                                   np.asarray(f.labels)[test])), 6))
        assert row["episode_accuracy"] == expected
    assert rows["support"]["episode_accuracy"] != rows["train"]["episode_accuracy"]
