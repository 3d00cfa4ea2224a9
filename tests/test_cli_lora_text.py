"""``embedcyto lora --head text [--text-lora]`` through the command line, and the workspace's
per-dataset prompts used by the text probes and by text heads."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from embedcyto.backbones.runtime import torch_threads
from embedcyto.cli.main import cli
from embedcyto.datasets.fixtures import make_fixture
from embedcyto.lora import runs
from embedcyto.report.records import load_lora_records
from embedcyto.report.variants import split_variants
from embedcyto.store import load_features, store_path

FAST = ["--device", "cpu", "--precision", "fp32", "--workers", "0", "--quiet"]
SHORT = ["--shots", "2", "--seed", "1", "--iterations", "4", "--warmup", "1", "--batch-size",
         "6", "--lr", "2e-2"]


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_a_text_head_on_an_image_only_model_is_refused_before_torch_is_imported(tmp_path):
    from tests.test_cli_lora import invoke_in_a_fresh_process

    out = invoke_in_a_fresh_process(["lora", "--model", "tiny-vit", "--dataset", "toy",
                                     "--layout", "folder", "--root", str(tmp_path),
                                     "--shots", "1", "--head", "text"])
    assert "'tiny-vit' has no text encoder" in out.stdout, out.stdout + out.stderr
    assert "tiny-clip" in out.stdout and "biomedclip" in out.stdout  # the ones that have one
    assert "exit 1" in out.stdout and "heavy []" in out.stdout
    assert not (tmp_path / "runs").exists()


def test_prompts_without_a_text_head_and_text_lora_without_it_are_refused(tmp_path):
    root = make_fixture("folder", tmp_path / "toy", per_class=4)
    where = ["--model", "tiny-clip", "--dataset", "toy", "--layout", "folder", "--root", root,
             "--store", tmp_path / "cache", "--runs", tmp_path / "runs", "--shots", "1"]
    prompts = tmp_path / "p.json"
    prompts.write_text("{}")
    out = _invoke("lora", *where, "--prompts", prompts)
    assert out.exit_code == 2 and "add --head text, or drop --prompts" in out.output
    out = _invoke("lora", *where, "--text-lora")
    assert out.exit_code == 1 and "add --head text" in out.output
    assert not (tmp_path / "runs").exists()


def test_text_head_runs_export_features_and_are_report_rows_of_their_own(tmp_path):
    root = make_fixture("folder", tmp_path / "toy", per_class=8, seed=2)
    where = ["--model", "tiny-clip", "--dataset", "toy", "--layout", "folder", "--root",
             root, "--store", tmp_path / "cache", "--runs", tmp_path / "runs"]
    outputs = {}
    for head in ([], ["--head", "text"], ["--head", "text", "--text-lora"]):
        out = _invoke("lora", *where, *SHORT, *FAST, *head, "--export-features")
        assert out.exit_code == 0, out.output
        outputs[" ".join(head)] = out.output
    assert "toy/tiny-clip shots-2-textlora seed-1: accuracy" in outputs[
        "--head text --text-lora"]
    folders = sorted(p.parent.name for p in (tmp_path / "runs").glob("lora/toy/*/*/seed-1"))
    assert folders == ["shots-2", "shots-2-texthead", "shots-2-textlora"]
    cache = tmp_path / "cache"
    frozen_text = load_features(store_path(cache, "toy", "tiny-clip+lora-shots-2-texthead-s1"))
    adapted = load_features(store_path(cache, "toy", "tiny-clip+lora-shots-2-textlora-s1"))
    assert adapted.provenance["lora_run"]["text_lora"] is True
    assert frozen_text.provenance["lora_run"]["head"] == "text"
    assert not np.allclose(adapted.X, frozen_text.X)  # two runs, two adapters

    records, notes = split_variants(load_lora_records(tmp_path / "runs").records)
    names = sorted(r["model"] for r in records)
    assert len(set(names)) == 3 and any("head text" in n and "text_lora true" in n
                                        for n in names), names
    assert notes and "head" in notes[0]
    again = _invoke("lora", *where, *SHORT, *FAST, "--head", "text", "--text-lora")
    assert again.exit_code == 0 and "already done" in again.output


WORKSPACE = """
[workspace]
store = "cache"

[lora.text]
models = ["tiny-clip"]
shots = [2]
seeds = [1]

[lora.text.settings]
head = "text"
iterations = 3
warmup = 1
batch_size = 6
num_workers = 0
precision = "fp32"
"""


def _text_group(path):
    with h5py.File(path, "r") as f:
        node = f["text/classes"]
        return json.loads(node.attrs["templates"]), str(node.attrs["prompts_sha256"])


def test_workspace_prompts_reach_the_text_probes_and_the_text_head(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EMBEDCYTO_WORKSPACE", raising=False)
    make_fixture("folder", tmp_path / "images" / "cells", per_class=8)
    (tmp_path / "embedcyto.toml").write_text(WORKSPACE)
    prompts = tmp_path / "cells_prompts.json"
    prompts.write_text(json.dumps({"templates": ["a stained {} cell."]}))
    out = _invoke("datasets", "add", "cells", "--layout", "folder", "--root", "images/cells",
                  "--prompts", "cells_prompts.json")
    assert out.exit_code == 0, out.output
    assert 'prompts = "cells_prompts.json"' in (tmp_path / "embedcyto.toml").read_text()
    out = _invoke("extract", "--model", "tiny-clip", "--quiet", "--workers", "0",
                  "--precision", "fp32")
    assert out.exit_code == 0, out.output
    out = _invoke("probe", "--methods", "zeroshot", "--seeds", "1")
    assert out.exit_code == 0, out.output
    store = tmp_path / "cache" / "cells" / "tiny-clip.h5"
    templates, digest = _text_group(store)
    assert templates == ["a stained {} cell."]

    prompts.write_text(json.dumps({"templates": ["a {} under the microscope."]}))
    out = _invoke("probe", "--methods", "zeroshot", "--seeds", "1")
    assert out.exit_code == 0, out.output
    assert "1 computed now" in out.output  # the old row is stale, not reused
    templates, changed = _text_group(store)
    assert templates == ["a {} under the microscope."] and changed != digest

    out = _invoke("lora", "--quiet")  # the plan: a text head with the workspace's prompts
    assert out.exit_code == 0, out.output
    run = tmp_path / "runs" / "lora" / "cells" / "tiny-clip" / "shots-2-texthead" / "seed-1"
    info = runs.read_run_config(run)
    assert info["prompts"]["templates"] == ["a {} under the microscope."]
    assert info["prompts"]["source"].endswith("cells_prompts.json")

    prompts.write_text(json.dumps({"classes": {"nope": "x"}}))
    bad = _invoke("lora", "--rerun")
    assert bad.exit_code == 1 and "no class 'nope'" in bad.output
    assert "Traceback" not in bad.output and runs.is_complete(run)
