"""The documented workflow through the command line: extract, then probe with 600 episodes."""

from __future__ import annotations

import json

from click.testing import CliRunner

from embedcyto.cli.main import cli
from embedcyto.datasets.fixtures import make_fixture


def test_extract_then_probe_600_episodes(tmp_path):
    root = make_fixture("sipakmed", tmp_path / "data", per_class=16)
    store, results = tmp_path / "cache", tmp_path / "results"
    runner = CliRunner()
    extracted = runner.invoke(cli, ["extract", "--model", "tiny-vit", "--model", "tiny-clip",
                                    "--dataset", "sipakmed", "--root", str(root),
                                    "--store", str(store), "--quiet", "--workers", "0",
                                    "--precision", "fp32"])
    assert extracted.exit_code == 0, extracted.output
    assert extracted.output.count("80 rows") == 2

    probed = runner.invoke(cli, ["probe", "--dataset", "sipakmed", "--store", str(store),
                                 "--episodes", "600", "--shots", "1,2,4", "--seeds", "1",
                                 "--results", str(results)])
    assert probed.exit_code == 0, probed.output
    rows = [json.loads(line) for line in (results / "sipakmed.jsonl").read_text().splitlines()]
    got = {(r["model"], r["method"], r["shots"]) for r in rows}
    expected = {(m, meth, None) for m in ("tiny-clip", "tiny-vit") for meth in ("linear", "knn")}
    expected |= {(m, "simpleshot", k) for m in ("tiny-clip", "tiny-vit") for k in (1, 2, 4)}
    assert got == expected
    for row in rows:
        assert 0.0 <= row["metrics"]["accuracy"] <= 1.0
        if row["method"] == "simpleshot":
            assert len(row["episode_accuracy"]) == 600
    # the generated cells carry a class signal that even random-weight features keep
    linear = [r["metrics"]["accuracy"] for r in rows if r["method"] == "linear"]
    assert max(linear) > 0.4  # chance is 0.2
    assert "tiny-vit" in probed.output and "simpleshot" in probed.output

    again = runner.invoke(cli, ["probe", "--dataset", "sipakmed", "--store", str(store),
                                "--episodes", "600", "--shots", "1,2,4", "--seeds", "1",
                                "--results", str(results)])
    assert again.exit_code == 0, again.output
    assert len((results / "sipakmed.jsonl").read_text().splitlines()) == len(rows)
