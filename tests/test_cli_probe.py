"""`embedcyto probe` through click's CliRunner on stores written by the store writer."""

from __future__ import annotations

import json

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
    bad = CliRunner().invoke(cli, ["probe", "--methods", "svm", "--store", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown method" in bad.output
    bad = CliRunner().invoke(cli, ["probe", "--shots", "1,x", "--store", str(tmp_path)])
    assert bad.exit_code == 2 and "comma-separated integers" in bad.output
