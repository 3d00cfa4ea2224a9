"""The README works as written: CI runs its test command, and its commands run when pasted."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from doc_commands import ROOT, commands, runnable

README = ROOT / "README.md"
PAGES = [README, ROOT / "pipelines/README.md"] + sorted(
    p for p in (ROOT / "docs").glob("*.md") if p.name != "cli.md")


def test_ci_runs_the_readme_test_command_in_a_clone_named_embedcyto():
    script = (ROOT / ".ci/run").read_text()
    pattern = re.search(r"grep -m1 -E '([^']+)' README.md", script).group(1)
    matches = [line for line in README.read_text().splitlines() if re.search(pattern, line)]
    assert len(matches) == 1 and matches[0].endswith(".venv/bin/python -m pytest -q")
    assert 'git clone -q "$repo" "$work/embedcyto"' in script
    assert 'cd "$work/embedcyto"' in script


def test_the_readme_activates_the_venv_before_its_first_bare_command():
    lines = commands(README)
    activate = lines.index("source .venv/bin/activate")
    bare = [i for i, c in enumerate(lines) if c.startswith(("embedcyto ", "python -m "))]
    assert bare and activate < bare[0]


def test_the_readme_says_how_long_the_tests_take():
    text = README.read_text()
    assert re.search(r"about \d+ minutes on a quiet 2-core machine", text)


def _activated_env(tmp_path):
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = os.path.dirname(os.path.dirname(sys.executable))
    env["PYTHONPATH"] = str(ROOT)  # the recipes run "from the repository root"
    env["HOME"] = str(tmp_path / "home")
    env["MPLCONFIGDIR"] = str(tmp_path / "mpl")
    return env


@pytest.mark.slow
def test_every_self_contained_command_of_the_readme_and_docs_runs_in_order(tmp_path):
    env = _activated_env(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    ran = []
    for page in PAGES:
        for command in filter(runnable, commands(page)):
            if command in ran:
                continue  # pasted once already; the page repeats it
            done = subprocess.run(command, shell=True, cwd=work, env=env, capture_output=True,
                                  text=True, timeout=300)
            output = done.stdout + done.stderr
            assert done.returncode == 0, f"{page.name}: `{command}` failed:\n{output[-2000:]}"
            assert "Traceback" not in output, f"{page.name}: `{command}`:\n{output[-2000:]}"
            ran.append(command)
    assert "embedcyto datasets list" in ran and "python -m pipelines.exp1_linear --smoke" in ran


def test_doc_commands_are_pasteable_not_usage_notation():
    found = [f"{page.name}: {c}" for page in PAGES for c in commands(page)
             if re.search(r"\[--|<[a-z]+>", c)]
    assert not found, "\n".join(found)
