"""``embedcyto datasets`` and ``embedcyto demo`` through click's test runner."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from embedcyto.cli.main import cli
from embedcyto.datasets.fixtures import make_fixture


@pytest.fixture()
def runner():
    return CliRunner()


def test_list(runner):
    result = runner.invoke(cli, ["datasets", "list"])
    assert result.exit_code == 0, result.output
    for name in ("sipakmed", "mlcc", "bcfc", "hicervix", "folder", "csv"):
        assert f"{name}: " in result.output
    assert "im_Dyskeratotic" in result.output


def test_check_prints_counts_and_writes_split(runner, tmp_path):
    root = make_fixture("sipakmed", tmp_path / "sip", per_class=10)
    args = ["datasets", "check", "--dataset", "sipakmed", "--root", str(root),
            "--split-dir", str(tmp_path / "splits")]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    total = next(line for line in lines if line.startswith("total"))
    counts = [int(v) for v in total.split()[1:]]
    assert counts[-1] == 50 and sum(counts[:3]) == 50
    assert any(line.startswith("Superficial-Intermediate") for line in lines)
    saved = json.loads((tmp_path / "splits" / "splits.json").read_text())
    assert len(saved["assignments"]) == 50
    again = runner.invoke(cli, args + ["--seed", "1"])
    assert again.exit_code == 1
    assert "pass seed 0" in again.output and "Traceback" not in again.output


def test_check_hicervix_levels(runner, tmp_path):
    root = make_fixture("hicervix", tmp_path / "h", per_class=1)
    result = runner.invoke(cli, ["datasets", "check", "--dataset", "hicervix", "--root",
                                 str(root), "--verify-images"])
    assert result.exit_code == 0, result.output
    assert "level_1: train 26, val 26, test 26" in result.output
    assert "level_2: train 25, val 25, test 25" in result.output
    assert "level_3: train 23, val 23, test 23" in result.output
    assert "splits: official" in result.output


def test_check_reports_skipped_images_and_strict_fails(runner, tmp_path):
    root = make_fixture("bcfc", tmp_path / "b", per_class=3)
    bad = root / "malignant" / "malignant_001.png"
    bad.write_bytes(b"\x89PNG broken")
    args = ["datasets", "check", "--dataset", "bcfc", "--root", str(root), "--verify-images"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "skipped 1 image(s)" in result.output and "malignant/malignant_001.png" in result.output
    assert "total" in result.output
    strict = runner.invoke(cli, args + ["--strict"])
    assert strict.exit_code == 1 and "--strict" in strict.output
    error = runner.invoke(cli, args + ["--on-bad-image", "error"])
    assert error.exit_code == 1 and "malignant_001.png" in error.output


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "x").mkdir() or (p / "y").mkdir() or p,
     "expected folders im_Dyskeratotic.*found: x, y"),
])
def test_check_errors_are_clean(runner, tmp_path, setup, message):
    root = setup(tmp_path)
    result = runner.invoke(cli, ["datasets", "check", "--dataset", "sipakmed", "--root",
                                 str(root)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert re.search(message, result.output), result.output


def test_check_empty_class_folder(runner, tmp_path):
    root = make_fixture("folder", tmp_path / "f", per_class=2)
    (root / "nothing_here").mkdir()
    result = runner.invoke(cli, ["datasets", "check", "--dataset", "mine", "--layout", "folder", "--root", str(root)])
    assert result.exit_code == 1 and "nothing_here contains no images" in result.output


def test_check_passes_adapter_options(runner, tmp_path):
    root = make_fixture("csv", tmp_path / "c", per_class=3)
    (root / "labels.csv").rename(root / "table.csv")
    base = ["datasets", "check", "--dataset", "mine", "--layout", "csv", "--root", str(root)]
    assert runner.invoke(cli, base).exit_code == 1
    result = runner.invoke(cli, base + ["-o", "csv_file=table.csv"])
    assert result.exit_code == 0, result.output
    total = next(line for line in result.output.splitlines() if line.startswith("total"))
    assert int(total.split()[-1]) == 9
    bad = runner.invoke(cli, base + ["-o", "nonsense"])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output


def test_check_decodes_images_by_default_and_says_so_when_told_not_to(runner, tmp_path):
    root = make_fixture("folder", tmp_path / "f", per_class=10)
    images = sorted((root / "negative").glob("*.png"))
    images[0].write_bytes(b"\x89PNG\r\n\x1a\n broken")
    images[1].write_bytes(images[1].read_bytes()[:70])  # truncated
    base = ["datasets", "check", "--dataset", "mine", "--layout", "folder", "--root", str(root)]
    result = runner.invoke(cli, base)
    assert result.exit_code == 0, result.output
    assert "skipped 2 image(s)" in result.output and "no problems found" not in result.output
    assert images[0].name in result.output and images[1].name in result.output
    quick = runner.invoke(cli, base + ["--no-verify-images"])
    assert quick.exit_code == 0, quick.output
    assert "images: not opened (--no-verify-images)" in quick.output and "no problems found\n" not in quick.output
    assert "the images themselves were not checked" in quick.output


def test_check_remembers_decoded_images_in_the_split_folder(runner, tmp_path):
    root = make_fixture("folder", tmp_path / "f", per_class=2)
    args = ["datasets", "check", "--dataset", "mine", "--layout", "folder", "--root", str(root), "--split-dir",
            str(tmp_path / "s")]
    assert runner.invoke(cli, args).exit_code == 0
    assert (tmp_path / "s" / "image_check.json").exists()


def test_unknown_adapter_suggests_the_close_one(runner, tmp_path):
    result = runner.invoke(cli, ["datasets", "check", "--dataset", "sipakmd", "--root",
                                 str(tmp_path)])
    assert result.exit_code == 1 and "Did you mean sipakmed?" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(cli, ["datasets", "check", "--dataset", "mine", "--layout", "sipakmd",
                                 "--root", str(tmp_path)])
    assert result.exit_code == 1 and "Did you mean sipakmed?" in result.output
