"""Every fix a message suggests can be followed: the options it names exist where it is shown.

Command modules may name their own flags (or those of a command or recipe they name); library
modules name parameters, written `name=value`, which the CLI rewrites into the flags of the
command that was run, or of the command the message names just before it
(``embedcyto.cli.main.cli_wording``), and the recipes into theirs
(``pipelines.common.recipe_wording``). Other programs' options (`hf download --local-dir`) are
theirs to name.
"""

from __future__ import annotations

import argparse
import ast
import re

import click
import pytest
from click.testing import CliRunner
from source_scan import function_parameters, modules, strings, tree

from embedcyto.cli import main

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")
NAMED = re.compile(rf"embedcyto ({'|'.join(main.COMMANDS)})\b|pipelines\.(\w+)|"
                   r"(hf|huggingface-cli|torchrun) ")
PARAMETER = main.PARAMETER

def _flags(command: click.Command) -> set[str]:
    found = {"--help"}
    for param in command.params:
        found.update(o for o in (*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ()))
                     if o.startswith("--"))
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            found |= _flags(sub)
    return found


def _recipe_flags(name: str) -> set[str]:
    from pipelines.common import make_parser

    parser: argparse.ArgumentParser = make_parser("x", "x")
    found = {o for o in parser._option_string_actions if o.startswith("--")}
    path = modules().get(f"pipelines.{name}")
    for node in ast.walk(tree(path)) if path else ():
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            found.update(a.value for a in node.args if isinstance(a, ast.Constant))
    return found


COMMAND_FLAGS = {name: _flags(main.cli.get_command(None, name)) for name in main.COMMANDS}
COMMAND_MODULES: dict[str, set[str]] = {}
for _name, _target in main.COMMANDS.items():  # a module may define several commands
    COMMAND_MODULES.setdefault(_target.split(":")[0], set()).add(_name)
#: The group's own options (e.g. --workspace), valid before any command.
GROUP_FLAGS = _flags(main.cli)


def _owner_flags(text: str, at: int, default: set[str]) -> set[str]:
    """The flags of the command or recipe named last before position ``at`` on its line."""
    line_start = text.rfind("\n", 0, at) + 1
    named = list(NAMED.finditer(text, line_start, at))
    if not named:
        return default
    command, recipe, other_tool = named[-1].groups()
    if other_tool:
        return None  # another program's options
    return COMMAND_FLAGS.get(command, set()) if command else _recipe_flags(recipe)


def _wrong_flags(module: str, own: set[str]) -> list[str]:
    wrong = []
    for line, text in strings(modules()[module]):
        for match in FLAG.finditer(text):
            owner = _owner_flags(text, match.start(), own)
            if owner is not None and match.group(0) not in owner:
                wrong.append(f"{module}:{line}: {match.group(0)} in {text[:70]!r}")
    return wrong


def test_command_modules_suggest_only_their_own_options():
    wrong = []
    for module, commands in COMMAND_MODULES.items():
        own = set().union(*(COMMAND_FLAGS[c] for c in commands)) | GROUP_FLAGS
        wrong += _wrong_flags(module, own)
    assert not wrong, "\n".join(wrong)


def test_recipes_suggest_only_their_own_options():
    wrong = []
    for module in (m for m in modules() if m.startswith("pipelines.")):
        wrong += _wrong_flags(module, _recipe_flags(module.split(".")[1]))
    assert not wrong, "\n".join(wrong)


def _library_modules():
    return [m for m in modules() if m.startswith("embedcyto.") and not m.startswith("embedcyto.cli")]


def _names_cli_flags(module: str) -> bool:
    """Whether a module's strings spell an embedcyto flag (another program's, such as `hf
    download ... --local-dir`, is that program's business)."""
    return any(_owner_flags(text, match.start(), set()) is not None
               for _, text in strings(modules()[module]) for match in FLAG.finditer(text))


def test_library_messages_name_parameters_not_flags():
    # Library messages are read by Python callers too; the CLI and the recipes turn the
    # parameters into their own flags.
    naming = sorted(m for m in _library_modules() if _names_cli_flags(m))
    assert not naming, f"CLI flags in library messages (name the parameter instead): {naming}"


def test_library_suggestions_name_real_parameters():
    parameters = set().union(*(function_parameters(modules()[m]) for m in _library_modules()))
    wrong = []
    for module in _library_modules():
        for line, text in strings(modules()[module]):
            wrong += [f"{module}:{line}: {m.group(0)}" for m in PARAMETER.finditer(text)
                      if m.group(1) not in parameters]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("command, expected", [
    ("extract", "another --dataset NAME"), ("datasets", "--split-dir SPLIT_DIR")])
def test_the_cli_turns_parameters_into_its_own_flags(command, expected):
    group = main.cli.get_command(None, command)
    target = group.commands["check"] if command == "datasets" else group
    text = main.cli_wording("use `force=True`, or `on_bad_image='skip'`; `split_dir=`", target)
    assert expected in text
    if command == "extract":
        assert "use --force, or --on-bad-image skip" in text
    else:
        on_off = main.cli_wording("`verify_images=True` / `verify_images=False`", target)
        assert on_off == "--verify-images / --no-verify-images"


def test_the_split_conflict_in_extract_suggests_an_option_extract_has(tmp_path, monkeypatch):
    from embedcyto.datasets import open_dataset
    from embedcyto.datasets.fixtures import make_fixture

    monkeypatch.chdir(tmp_path)
    root = make_fixture("sipakmed", tmp_path / "data" / "sipakmed", per_class=2)
    open_dataset("sipakmed", root, split_dir=tmp_path / "cache" / "sipakmed")
    result = CliRunner().invoke(main.cli, [
        "extract", "--model", "tiny-vit", "--random-weights", "--dataset", "sipakmed",
        "--layout", "folder", "--root", str(root), "--store", "cache"])
    assert result.exit_code == 1
    assert "made for the sipakmed adapter" in result.output
    assert "--split-dir" not in result.output and "another --dataset NAME" in result.output


def test_a_library_error_reaches_the_command_line_with_its_flags(tmp_path):
    result = CliRunner().invoke(main.cli, [
        "probe", "--backend", "threading", "--scheduler", "tcp://head:8786",
        "--store", str(tmp_path)])
    assert result.exit_code == 1
    assert "choose --backend dask" in result.output and "backend=" not in result.output


def test_a_parameter_after_a_named_command_becomes_that_commands_flag():
    report = main.cli.get_command(None, "report")
    text = main.cli_wording("rerun it with `embedcyto lora` and `rerun=True`; or `runs_dir=`",
                            report)
    assert text == "rerun it with `embedcyto lora` and --rerun; or --runs RUNS_DIR"
    merge = main.cli_wording("run `embedcyto store merge` with `force=True`", report)
    assert merge == "run `embedcyto store merge` with --force"



def test_a_stand_in_is_the_first_flag_the_command_has():
    probe = main.cli.get_command(None, "probe")
    store = main.cli.get_command(None, "store").commands["export"]
    message = "save one with `embedcyto probe` and `out_dir=DIR`"
    assert main.cli_wording(message, store) == "save one with `embedcyto probe` and --save-model DIR"
    assert main.cli_wording("choose another `out_dir=`", store) == "choose another --out DIR"
    assert main.cli_wording("choose another `out_dir=`", probe) == (
        "choose another --save-model DIR")


def test_log_messages_of_a_command_get_its_flags(caplog):
    import logging

    from embedcyto.parallel import resolve_n_jobs

    @click.command()
    @click.option("--n-jobs", type=int)
    def jobs(n_jobs):
        resolve_n_jobs("dask", n_jobs)

    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(main._with_clean_errors(jobs), ["--n-jobs", "1"])
    assert result.exit_code == 0, result.output
    assert "--n-jobs 1 runs everything in this process, not on the dask cluster" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resolve_n_jobs("dask", 1)  # a Python caller: the parameter, no filter left behind
    assert "`n_jobs=1` runs everything" in caplog.text
