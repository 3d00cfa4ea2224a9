"""The user's invocations in an empty folder, through the command line and nothing else:
init, datasets add, then `extract --model tiny-clip`, `probe --episodes 600`, `lora`, `report`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from embedcyto.backbones.runtime import torch_threads
from embedcyto.cli.main import cli
from embedcyto.datasets.fixtures import make_fixture

PLAN = """
[lora.quick]
models = ["tiny-clip"]
datasets = ["cells"]
shots = [1, 2]
seeds = [1, 2]

[lora.quick.settings]
iterations = 3
warmup = 1
batch_size = 4
num_workers = 0
"""


def run(*args):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EMBEDCYTO_WORKSPACE", raising=False)
    make_fixture("folder", tmp_path / "images" / "cells", per_class=10)
    make_fixture("sipakmed", tmp_path / "images" / "pap", per_class=8)
    with torch_threads(1):
        yield tmp_path


@pytest.mark.slow
def test_the_documented_workflow_runs_with_no_other_options(folder):
    run("init")
    run("datasets", "add", "cells", "--layout", "folder", "--root", "images/cells")
    run("datasets", "add", "pap", "--layout", "sipakmed", "--root", "images/pap")
    with open(folder / "embedcyto.toml", "a", encoding="utf-8") as handle:
        handle.write(PLAN)  # what a user adds by hand (docs/workspace.md)

    out = run("extract", "--model", "tiny-clip")
    assert "cells    tiny-clip  30" in out and "pap      tiny-clip  40" in out
    assert "2 stores: 0 cached, 2 (re)computed, 70 images embedded" in out
    again = run("extract", "--model", "tiny-clip")
    assert "2 stores: 2 cached, 0 (re)computed, 0 images embedded" in again

    # literally; shots 8 and 16 exceed these tiny classes and are skipped with a warning
    first_probe = run("probe", "--episodes", "600")
    assert "30 result rows" in first_probe and "30 computed now, 0 already there" in first_probe
    again = run("probe", "--episodes", "600")  # only what is missing: nothing
    assert "0 computed now, 30 already there" in again
    for name in ("cells", "pap"):
        rows = [json.loads(x) for x in (folder / "results" / "probe" / f"{name}.jsonl")
                .read_text().splitlines()]
        assert {r["method"] for r in rows} == {"linear", "knn", "simpleshot"}
        assert {r["shots"] for r in rows} == {None, 1, 2, 4}
        assert {r["seed"] for r in rows} == {1, 2, 3}
        assert all(len(r["episode_accuracy"]) == 600
                   for r in rows if r["method"] == "simpleshot")

    first = run("lora", "--shots", "1")  # narrowed: two of the plan's four runs
    assert first.count("-> ") == 2 and "shots-1 seed-2" in first
    plan = run("lora", "--dry-run")
    assert "lora: 4 runs, 2 done, 2 to run" in plan
    assert "from the measured step rate" in plan and "unknown" not in plan
    rest = run("lora")
    assert rest.count("(already done") == 2 and rest.count("steps,") == 2
    assert (folder / "runs" / "lora" / "cells" / "tiny-clip" / "shots-2" / "seed-2"
            / "COMPLETE").is_file()

    report = run("report")
    assert "read 30 probe rows and 4 LoRA runs" in report
    assert (folder / "report" / "report.md").is_file()

    status = run("status")
    assert "cells    tiny-clip  complete  15          4/4" in status


def test_extract_without_model_uses_the_default_models_and_lists_missing_inputs(folder):
    run("init")
    run("datasets", "add", "cells", "--layout", "folder", "--root", "images/cells")
    none = CliRunner().invoke(cli, ["extract"])
    assert none.exit_code == 1 and "embedcyto models add" in none.output
    run("models", "add", "tiny-clip")
    (folder / "images" / "elsewhere").mkdir()
    run("datasets", "add", "pap", "--layout", "sipakmed", "--root", "images/pap")
    (folder / "images" / "pap").rename(folder / "images" / "moved")
    run("models", "add", "clip")
    missing = CliRunner().invoke(cli, ["extract"])
    assert missing.exit_code == 1
    assert "2 input(s) missing (nothing was run)" in missing.output
    assert "dataset pap: root" in missing.output and "weights of clip" in missing.output
    assert not (folder / "cache" / "cells" / "tiny-clip.h5").exists()
    run("models", "remove", "clip")
    run("datasets", "remove", "pap")
    out = run("extract", "--quiet")
    assert "cells/tiny-clip: 30 rows, 30 computed" in out


def test_dataset_means_a_name_and_the_old_adapter_meaning_says_what_to_type(folder):
    old = CliRunner().invoke(cli, ["extract", "--model", "tiny-clip", "--dataset", "folder",
                                   "--root", "images/cells"])
    assert old.exit_code == 1
    assert "give --dataset NAME, --layout folder and --root images/cells" in old.output
    assert "`" + "dataset=" not in old.output
    run("init")
    run("datasets", "add", "cells", "--layout", "folder", "--root", "images/cells")
    unknown = CliRunner().invoke(cli, ["extract", "--model", "tiny-clip", "--dataset", "cels"])
    assert unknown.exit_code == 1
    assert "did you mean 'cells'" in unknown.output and "it has: cells" in unknown.output
    layout = CliRunner().invoke(cli, ["lora", "--model", "tiny-clip", "--dataset", "folder",
                                      "--shots", "1"])
    assert layout.exit_code == 1 and "is a layout" in layout.output
    assert "or --dataset NAME with --layout folder and --root PATH for other" in layout.output
    nowhere = CliRunner().invoke(cli, ["--workspace", "nowhere.toml", "status"])
    assert nowhere.exit_code == 1
    assert "the workspace given (--workspace WORKSPACE) names" in nowhere.output


def test_adhoc_dataset_without_workspace_and_save(folder):
    out = run("extract", "--model", "tiny-clip", "--dataset", "sipakmed", "--root",
              "images/pap", "--quiet", "--save")
    assert "sipakmed/tiny-clip: 40 rows" in out  # a study name implies its layout
    assert (folder / "cache" / "sipakmed" / "tiny-clip.h5").is_file()
    saved = (folder / "embedcyto.toml").read_text()
    assert "[datasets.sipakmed]" in saved and 'layout = "sipakmed"' in saved
    assert "cache hit" in run("extract", "--model", "tiny-clip", "--dataset", "sipakmed")


def test_probe_of_an_unknown_dataset_lists_the_known_ones(folder):
    run("init")
    run("datasets", "add", "cells", "--layout", "folder", "--root", "images/cells")
    result = CliRunner().invoke(cli, ["probe", "--dataset", "cels"])
    assert result.exit_code == 1
    assert "did you mean 'cells'" in result.output and "it has: cells" in result.output


def test_compare_reads_the_workspace_folders(folder):
    run("init")
    (folder / "embedcyto.toml").write_text(
        (folder / "embedcyto.toml").read_text().replace('results = "results"',
                                                        'results = "out/res"'))
    result = CliRunner().invoke(cli, ["compare", "--dataset", "cells"])
    assert result.exit_code == 1 and "out/res/probe" in result.output, result.output


def test_lora_without_a_plan_says_how_to_add_one(folder):
    run("init")
    run("datasets", "add", "cells", "--layout", "folder", "--root", "images/cells")
    result = CliRunner().invoke(cli, ["lora", "--model", "tiny-clip"])
    assert result.exit_code == 2 and "[lora.NAME]" in result.output
    trained_nothing = not (folder / "runs").exists()
    assert trained_nothing


def test_status_lists_missing_weights_and_planned_runs(folder):
    run("init")
    run("datasets", "add", "cells", "--layout", "folder", "--root", "images/cells")
    run("models", "add", "clip", "tiny-clip")
    with open(folder / "embedcyto.toml", "a", encoding="utf-8") as handle:
        handle.write(PLAN)
    out = run("status")
    assert "cells    clip       missing" in out
    assert "cells    tiny-clip  missing  0           0/4" in out
    assert "missing weights:" in out and "weights of clip" in out
    assert "weights of tiny-clip" not in out


def test_the_workspace_weights_dir_is_where_weights_are_looked_for(folder):
    run("init")
    run("datasets", "add", "cells", "--layout", "folder", "--root", "images/cells")
    run("models", "add", "clip")
    assert "weights of clip" in run("status")
    (folder / "w" / "clip").mkdir(parents=True)
    (folder / "w" / "clip" / "open_clip_model.safetensors").write_bytes(b"placeholder")
    text = (folder / "embedcyto.toml").read_text().replace("[workspace]\n",
                                                           '[workspace]\nweights_dir = "w"\n')
    (folder / "embedcyto.toml").write_text(text)
    assert "missing weights" not in run("status")  # found relative to the workspace folder
