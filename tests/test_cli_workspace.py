"""Commands that write the workspace file: init, datasets add/remove, models add/remove."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from embedcyto.cli.main import cli
from embedcyto.datasets.fixtures import make_fixture
from embedcyto.workspace import load_workspace


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EMBEDCYTO_WORKSPACE", raising=False)
    return tmp_path


def run(*args):
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output
    return result


def test_init_writes_an_empty_workspace_and_refuses_to_overwrite(here):
    assert run("init").exit_code == 0
    ws = load_workspace(here / "embedcyto.toml")
    assert ws.datasets == () and ws.models == ()
    again = run("init")
    assert again.exit_code == 1 and "already exists" in again.output and "--force" in again.output
    assert run("init", "--study", "--force").exit_code == 0
    study = load_workspace(here / "embedcyto.toml")
    assert study.dataset_names == ("bcfc", "mlcc", "sipakmed", "hicervix")
    assert [p.name for p in study.lora] == ["fewshot", "fractions"]


def test_datasets_add_checks_the_root_then_remembers_it_relative(here):
    run("init")
    root = make_fixture("folder", here / "data" / "ihc", per_class=10)
    added = run("datasets", "add", "ihc", "--layout", "folder", "--root", str(root),
                "--split-seed", "4", "--ratios", "0.6,0.2,0.2")
    assert added.exit_code == 0, added.output
    assert "total" in added.output and "no problems found" in added.output  # the check's table
    entry = load_workspace(here / "embedcyto.toml").dataset("ihc")
    assert entry.root == "data/ihc" and entry.split_seed == 4 and entry.ratios == (0.6, 0.2, 0.2)
    twice = run("datasets", "add", "ihc", "--layout", "folder", "--root", str(root))
    assert twice.exit_code == 1 and "already has a dataset 'ihc'" in twice.output


def test_datasets_add_refuses_a_bad_root_and_writes_nothing(here):
    run("init")
    before = (here / "embedcyto.toml").read_text()
    missing = run("datasets", "add", "x", "--layout", "sipakmed", "--root", str(here / "nope"))
    assert missing.exit_code == 1 and "nope" in missing.output
    (here / "empty").mkdir()
    (here / "empty" / "cls").mkdir()
    empty = run("datasets", "add", "x", "--layout", "folder", "--root", str(here / "empty"))
    assert empty.exit_code == 1 and "contains no images" in empty.output
    assert (here / "embedcyto.toml").read_text() == before


def test_datasets_remove_and_unknown_names_listed(here):
    run("init")
    root = make_fixture("folder", here / "f", per_class=2)
    run("datasets", "add", "a", "--layout", "folder", "--root", str(root), "--no-verify-images")
    gone = run("datasets", "remove", "b")
    assert gone.exit_code == 1 and "it has: a" in gone.output
    assert run("datasets", "remove", "a").exit_code == 0
    assert load_workspace(here / "embedcyto.toml").datasets == ()


def test_models_add_checks_cards_and_remove(here):
    run("init")
    assert run("models", "add", "tiny-clip", "tiny-vit").exit_code == 0
    bad = run("models", "add", "tiny-clp")
    assert bad.exit_code == 1 and "tiny-clip" in bad.output
    assert load_workspace(here / "embedcyto.toml").models == ("tiny-clip", "tiny-vit")
    assert run("models", "remove", "tiny-vit").exit_code == 0
    assert load_workspace(here / "embedcyto.toml").models == ("tiny-clip",)
    nothere = run("models", "remove", "clip")
    assert nothere.exit_code == 1 and "tiny-clip" in nothere.output


def test_commands_without_a_workspace_say_how_to_make_one(here):
    result = run("datasets", "add", "a", "--layout", "folder", "--root", str(here))
    assert result.exit_code == 1 and "embedcyto init" in result.output


def test_workspace_option_and_environment_name_another_file(here, monkeypatch):
    other = here / "elsewhere"
    assert run("init", str(other)).exit_code == 0
    assert run("--workspace", str(other), "models", "add", "tiny-vit").exit_code == 0
    assert load_workspace(other / "embedcyto.toml").models == ("tiny-vit",)
    monkeypatch.setenv("EMBEDCYTO_WORKSPACE", str(other / "embedcyto.toml"))
    assert run("models", "add", "tiny-clip").exit_code == 0
    assert load_workspace(other / "embedcyto.toml").models == ("tiny-vit", "tiny-clip")
    wrong = run("--workspace", str(here / "typo.toml"), "status")
    assert wrong.exit_code == 1 and "does not exist" in wrong.output


def test_the_workspace_option_lasts_one_invocation(here):
    from embedcyto.store import default_store_dir

    other = here / "elsewhere"
    run("init", str(other))
    assert run("--workspace", str(other), "status").exit_code == 0
    assert default_store_dir() == Path("cache")
