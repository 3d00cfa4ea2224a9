"""The command group: did-you-mean for mistyped commands, and what Ctrl-C says."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from embedcyto.cli import main


def test_a_mistyped_command_gets_a_suggestion():
    result = CliRunner().invoke(main.cli, ["extrct"])
    assert result.exit_code == 2
    assert "No such command 'extrct'. Did you mean 'extract'?" in result.output


def test_an_unrelated_word_gets_no_suggestion():
    result = CliRunner().invoke(main.cli, ["zzzz"])
    assert result.exit_code == 2
    assert "No such command 'zzzz'." in result.output and "Did you mean" not in result.output


def _interrupting(name):
    @click.command(name)
    def command():
        raise KeyboardInterrupt

    return main._with_clean_errors(command)


def test_ctrl_c_says_what_was_kept_and_how_to_resume(monkeypatch):
    monkeypatch.setattr(main.LazyGroup, "get_command",
                        lambda self, ctx, name: _interrupting(name) if name == "probe" else None)
    result = CliRunner().invoke(main.cli, ["probe"])
    assert result.exit_code == main.INTERRUPTED_EXIT_CODE
    assert "Aborted!" not in result.output
    assert "Interrupted:" in result.output and "skips them" in result.output


def test_every_long_running_command_has_its_own_resume_note():
    assert set(main.KEPT_ON_INTERRUPT) <= set(main.COMMANDS)
    assert {"extract", "probe", "lora"} <= set(main.KEPT_ON_INTERRUPT)


def test_python_dash_m_embedcyto_runs_the_command_line(monkeypatch, capsys):
    import importlib
    import runpy
    import sys

    monkeypatch.setattr("sys.argv", ["embedcyto", "--help"])
    sys.modules.pop("embedcyto.__main__", None)  # runpy warns when it is already imported
    with pytest.raises(SystemExit) as stop:
        runpy.run_module("embedcyto", run_name="__main__")
    assert stop.value.code == 0
    assert "Usage: embedcyto" in capsys.readouterr().out
    entry = importlib.import_module("embedcyto.__main__")  # importing it runs nothing
    assert entry.cli is main.cli and capsys.readouterr().out == ""
