"""``embedcyto report`` through click's test runner, and the generated CLI reference."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from embedcyto.cli.docgen import render_cli_docs
from embedcyto.cli.main import cli

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _rows():
    for model, acc in (("clip", 0.7), ("vit", 0.6)):
        for seed in (1, 2, 3):
            yield {"dataset": "sipakmed", "model": model, "method": "study_head", "shots": None,
                   "seed": seed, "options": {},
                   "metrics": {"accuracy": acc + 0.01 * seed, "balanced_accuracy": acc,
                               "macro_f1": acc}}


def test_report_command_writes_the_report(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "sipakmed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["report", "--results", str(results), "--runs",
                                      str(tmp_path / "runs"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "read 6 probe rows and 0 LoRA runs" in result.output
    text = (out / "report.md").read_text()
    assert "| clip | 72.0 ± 1.0 | 72.0 ± 1.0 |" in text
    assert (out / "tables" / "table1_accuracy_study_head.csv").is_file()


def test_report_without_results_is_one_clean_error(tmp_path):
    result = CliRunner().invoke(cli, ["report", "--results", str(tmp_path / "none"),
                                      "--runs", str(tmp_path / "none"), "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "no results found" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_cli_reference_is_up_to_date():
    assert DOCS.read_text(encoding="utf-8") == render_cli_docs(), (
        "docs/cli.md is stale: run `python -m embedcyto.cli.docgen --write docs/cli.md`")
