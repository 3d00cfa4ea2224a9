"""The docs and the README say what the code does: weight file names, provenance values."""

from __future__ import annotations

import re
from pathlib import Path

from embedcyto import extract as ex
from embedcyto.backbones import list_cards

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", ROOT / "pipelines/README.md"]


def test_docs_recommend_the_same_weight_file_as_the_missing_weights_error():
    first = {c.hub_repo: c.weights_files[0] for c in list_cards() if c.hub_repo and c.weights_files}
    seen = 0
    for page in PAGES:
        for repo, file in re.findall(r"hf download (\S+/\S+) (\S+\.(?:safetensors|bin|pth|pt))\b",
                                     page.read_text()):
            if "{" in repo:
                continue
            seen += 1
            assert repo in first, f"{page.name}: {repo} is no card's hub repository"
            assert file == first[repo], (f"{page.name} recommends {file} for {repo}; the "
                                         f"missing-weights error recommends {first[repo]}")
    assert seen >= 2


def test_the_documented_random_weights_hash_is_what_a_store_records():
    from test_store_fixtures import make_dataset

    from embedcyto.backbones import get_card

    row = next(line for line in (ROOT / "docs/store.md").read_text().splitlines()
               if line.startswith("| `weights_sha256` |"))
    documented = re.search(r'`"([^"`]+)"` for random weights', row).group(1)
    provenance = ex.build_provenance(make_dataset(5), get_card("tiny-vit"), None, "float32",
                                     split_hash="x", device="cpu", config=ex.ExtractConfig())
    assert provenance["weights_sha256"] == documented


def _deviation_rows():
    page = (ROOT / "docs/reproduce.md").read_text()
    section = page.split("## 6. Where embedcyto's defaults differ from the authors' code", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]  # past header
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]


def _command_flags():
    import click

    from embedcyto.cli.main import COMMANDS, cli

    def flags(command):
        found = {o for p in command.params
                 for o in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))
                 if o.startswith("--")}
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                found |= flags(sub)
        return found

    return {name: flags(cli.get_command(None, name)) for name in COMMANDS}


def test_every_option_the_deviations_page_names_exists():
    from test_messages import _recipe_flags

    from pipelines.common import make_parser

    commands = _command_flags()
    recipe = {o for o in make_parser("x", "x")._option_string_actions if o.startswith("--")}
    rows = _deviation_rows()
    points = {row[0] for row in rows}
    for point in ("splits", "SIPaKMeD groups", "attention of UNI and BiomedCLIP",
                  "training augmentation", "launcher vs README", "precision",
                  "Experiment 3 length", "fractions", "HiCervix label space",
                  "SimpleShot centring", "reported split"):
        assert point in points
    checked = 0
    for row in rows:
        owner = None
        for snippet in re.findall(r"`([^`]+)`", row[-1]):
            named = re.match(r"(?:embedcyto (\w+)|python -m pipelines\.(\w+))", snippet)
            if named:
                owner = commands[named.group(1)] if named.group(1) else \
                    recipe | _recipe_flags(named.group(2))
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", snippet):
                assert owner is not None, f"{snippet!r}: which command?"
                assert flag in owner, f"docs/reproduce.md names {flag}, which does not exist"
                checked += 1
    assert checked >= 8
