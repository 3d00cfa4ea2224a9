"""The workspace file: round trip, validation with the fix named, discovery rules."""

from __future__ import annotations

import pytest

from embedcyto.workspace import (
    DatasetEntry,
    LoraPlan,
    Workspace,
    WorkspaceError,
    find_workspace,
    load_workspace,
    save_workspace,
)
from embedcyto.workspace.study import empty_workspace, study_workspace


def test_study_workspace_round_trips_through_the_file(tmp_path):
    ws = study_workspace(tmp_path)
    path = save_workspace(ws, tmp_path / "embedcyto.toml")
    back = load_workspace(path)
    assert back == ws
    assert back.dataset_names == ("bcfc", "mlcc", "sipakmed", "hicervix")
    assert back.dataset_root("mlcc") == tmp_path.resolve() / "data" / "mlcc"
    assert [p.name for p in back.lora] == ["fewshot", "fractions"]
    assert dict(back.lora[1].settings)["targets"] == ("q", "k", "v", "o")


def test_hand_written_file_with_quotes_and_options_reads_back(tmp_path):
    text = """
[workspace]
store = "feats"
models = ["tiny-clip"]

[datasets."my-ihc"]
layout = "csv"
root = "~/data/ihc"
ratios = [0.6, 0.2, 0.2]
split_seed = 4

[datasets."my-ihc".options]
csv_file = "labels \\"v2\\".csv"
"""
    (tmp_path / "embedcyto.toml").write_text(text)
    ws = load_workspace(tmp_path / "embedcyto.toml")
    entry = ws.dataset("my-ihc")
    assert entry.options == (("csv_file", 'labels "v2".csv'),)
    assert entry.ratios == (0.6, 0.2, 0.2) and entry.split_seed == 4
    assert ws.folder("store") == tmp_path.resolve() / "feats"
    assert ws.dataset_root("my-ihc").is_absolute() and "~" not in str(ws.dataset_root("my-ihc"))
    save_workspace(ws)
    assert load_workspace(tmp_path / "embedcyto.toml") == ws


@pytest.mark.parametrize("text, message", [
    ("[workspace]\nstor = 'x'\n", "unknown field 'stor'.*did you mean 'store'"),
    ("[datasets.a]\nlayout = 'sipakmd'\nroot = 'r'\n", "dataset a: unknown dataset adapter"),
    ("[datasets.a]\nlayout = 'folder'\n", r"\[datasets.a\] needs root"),
    ("[datasets.'a|b']\nlayout = 'folder'\nroot = 'r'\n", "name 'a|b' is not allowed"),
    ("[datasets.a]\nlayout = 'folder'\nroot = 'r'\nratios = [0.5, 0.5, 0.5]\n", "summing to 1"),
    ("[lora.p]\nmodels = ['clip']\n", "needs shots"),
    ("[lora.p]\nmodels = ['clip']\nshots = [0]\n", "at least 1"),
    ("[lora.p]\nmodels = ['clip']\nshots = [1]\ndatasets = ['nope']\n", "not in \\[datasets\\]"),
    ("[lora.p]\nmodels = 'clip'\nshots = [1]\n", "must be a list"),
    ("[workspace\n", "not valid TOML"),
])
def test_bad_files_are_refused_with_the_fix(tmp_path, text, message):
    (tmp_path / "embedcyto.toml").write_text(text)
    with pytest.raises(WorkspaceError, match=message):
        load_workspace(tmp_path / "embedcyto.toml")


def test_unknown_dataset_lists_the_known_ones_and_how_to_add(tmp_path):
    ws = study_workspace(tmp_path)
    with pytest.raises(WorkspaceError, match=r"did you mean 'sipakmed'.*has: bcfc, mlcc, "
                                             r"sipakmed, hicervix.*datasets add sipakmd"):
        ws.dataset("sipakmd")


def test_add_remove_datasets_and_models(tmp_path):
    ws = empty_workspace(tmp_path)
    ws = ws.with_dataset(DatasetEntry("a", "folder", "data/a")).with_models(["clip", "quilt"])
    with pytest.raises(WorkspaceError, match="already has a dataset 'a'"):
        ws.with_dataset(DatasetEntry("a", "folder", "data/b"))
    ws = ws.with_models(["clip"]).without_models(["quilt"])
    assert ws.models == ("clip",)
    with pytest.raises(WorkspaceError, match="not in the default models: uni"):
        ws.without_models(["uni"])
    assert ws.without_dataset("a").datasets == ()


def test_removing_the_only_dataset_of_a_plan_is_refused(tmp_path):
    ws = study_workspace(tmp_path)
    with pytest.raises(WorkspaceError, match="only dataset of LoRA plan.*fractions"):
        ws.without_dataset("hicervix")
    assert "mlcc" not in ws.without_dataset("mlcc").dataset_names


def test_find_workspace_explicit_env_and_parent_folders(tmp_path):
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    assert find_workspace(cwd=nested, environ={}) is None
    save_workspace(empty_workspace(tmp_path), tmp_path / "embedcyto.toml")
    assert find_workspace(cwd=nested, environ={}) == tmp_path / "embedcyto.toml"
    other = tmp_path / "other.toml"
    save_workspace(empty_workspace(tmp_path), other)
    assert find_workspace(cwd=nested, environ={"EMBEDCYTO_WORKSPACE": str(other)}) == other
    with pytest.raises(WorkspaceError, match=r"\$EMBEDCYTO_WORKSPACE names .*typo.toml"):
        find_workspace(cwd=nested, environ={"EMBEDCYTO_WORKSPACE": str(tmp_path / "typo.toml")})
    with pytest.raises(WorkspaceError, match=r"the workspace given \(`workspace=`\) names"):
        find_workspace(tmp_path / "missing", environ={})


def test_plans_keep_settings_order_independent():
    a = LoraPlan("p", models=("clip",), shots=(1,), settings={"lr": 0.1, "rank": 4})
    b = LoraPlan("p", models=("clip",), shots=(1,), settings={"rank": 4, "lr": 0.1})
    assert a == b
    assert Workspace(base=__import__("pathlib").Path("/x"), lora=(a,)).to_dict()["lora"]["p"][
        "settings"] == {"lr": 0.1, "rank": 4}


def test_a_datasets_prompts_file_round_trips_and_resolves_against_the_workspace(tmp_path):
    ws = empty_workspace(tmp_path).with_dataset(
        DatasetEntry(name="cells", layout="folder", root="images", prompts="p/cells.json"))
    ws = ws.with_dataset(DatasetEntry(name="pap", layout="sipakmed", root="pap"))
    back = load_workspace(save_workspace(ws, tmp_path / "embedcyto.toml"))
    assert back == ws and back.dataset("cells").prompts == "p/cells.json"
    assert back.prompts_files() == {"cells": tmp_path.resolve() / "p" / "cells.json"}
    assert 'prompts = "p/cells.json"' in (tmp_path / "embedcyto.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text('[datasets.cells]\nlayout = "folder"\nroot = "x"\nprompts = 3\n')
    with pytest.raises(WorkspaceError, match=r"prompts must be the path of a JSON prompts file"):
        load_workspace(bad)
