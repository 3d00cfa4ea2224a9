"""The text-aware probes through the command line, on a store of a tiny vision-language card."""

from __future__ import annotations

import json

import h5py
from click.testing import CliRunner

from embedcyto.cli.main import cli
from embedcyto.datasets.fixtures import make_fixture


def _rows(results):
    return [json.loads(line) for line in (results / "sipakmed.jsonl").read_text().splitlines()]


def test_probe_zeroshot_and_text_methods_600_episodes(tmp_path, caplog):
    root = make_fixture("sipakmed", tmp_path / "data", per_class=16)
    store, results = tmp_path / "cache", tmp_path / "results"
    runner = CliRunner()
    extracted = runner.invoke(cli, ["extract", "--model", "tiny-clip", "--model", "tiny-vit",
                                    "--dataset", "sipakmed", "--root", str(root),
                                    "--store", str(store), "--quiet", "--workers", "0",
                                    "--precision", "fp32"])
    assert extracted.exit_code == 0, extracted.output
    args = ["probe", "--dataset", "sipakmed", "--store", str(store), "--episodes", "600",
            "--methods", "zeroshot,textlinear,tipadapter,lppp", "--shots", "1,2",
            "--seeds", "1", "--results", str(results)]
    with caplog.at_level("WARNING"):
        probed = runner.invoke(cli, args)
    assert probed.exit_code == 0, probed.output
    rows = _rows(results)
    got = {(r["model"], r["method"], r["shots"]) for r in rows}
    expected = {("tiny-clip", "zeroshot", None)}
    expected |= {("tiny-clip", m, k) for m in ("textlinear", "tipadapter", "lppp") for k in (1, 2)}
    assert got == expected  # tiny-vit has no text encoder: skipped, and said so
    assert any("tiny-vit has no text encoder" in r.getMessage() for r in caplog.records)
    for row in rows:
        assert 0.0 <= row["metrics"]["accuracy"] <= 1.0
        if row["shots"]:
            assert len(row["episode_accuracy"]) == 600
    with h5py.File(store / "sipakmed" / "tiny-clip.h5", "r") as f:
        assert f["text/classes/embeddings"].shape == (5, 32)
        assert "dyskeratotic" in f["text/classes"].attrs["phrases"]

    # new prompts make the zero-shot row stale: it is computed again, with the new digest
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"templates": ["a cell: {}."]}))
    again = runner.invoke(cli, ["probe", "--dataset", "sipakmed", "--store", str(store),
                                "--model", "tiny-clip", "--methods", "zeroshot", "--seeds", "1",
                                "--prompts", str(prompts), "--results", str(results)])
    assert again.exit_code == 0, again.output
    zeroshot = [r for r in _rows(results) if r["method"] == "zeroshot"]
    assert len({json.dumps(r["options"], sort_keys=True) for r in zeroshot}) == 2
