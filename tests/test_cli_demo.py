"""``embedcyto demo`` end to end: generated data, random weights, every stage, the report."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from PIL import Image

from embedcyto.cli.main import cli


@pytest.mark.slow  # every stage end to end; the refusals below keep the demo command in the fast profile
def test_demo_runs_every_stage_and_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default folder is ./embedcyto-demo, kept afterwards
    (tmp_path / "embedcyto-demo").mkdir()
    (tmp_path / "embedcyto-demo" / ".embedcyto-demo").write_text("an earlier demo\n")
    (tmp_path / "embedcyto-demo" / "old.txt").write_text("from the earlier demo")
    result = CliRunner().invoke(cli, ["demo"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "embedcyto-demo"
    assert not (out / "old.txt").exists()  # an earlier demo's folder is replaced
    text = result.output
    assert "report: embedcyto-demo/report/report.md" in text
    assert text.count("RANDOM-WEIGHT models") == 2  # said at the start and at the end
    assert "embedcyto extract --model clip" in text  # what to run on real data
    report = (out / "report" / "report.md").read_text()
    for model in ("tiny-clip", "tiny-vit"):
        assert f"| {model} |" in report
        assert f"| {model} · LoRA |" in report and f"| {model} · SimpleShot |" in report
    assert "Random-weight models" in report and "**Generated data (sipakmed)" in report
    runs = sorted(p.name for p in (out / "runs" / "lora" / "sipakmed" / "tiny-clip").iterdir())
    assert runs == ["shots-1", "shots-2", "shots-4"]
    figure = out / "report" / "figures" / "fewshot_sipakmed.png"
    with Image.open(figure) as image:
        assert image.format == "PNG"
        legend = image.info["Description"].split("\n")
        assert "generated data (sipakmed)" in image.info["Warning"]
    # LoRA, SimpleShot and linear-probe line for each model; LP++ and zero-shot for tiny-clip
    assert len(legend) == 8 and {"tiny-clip LP++", "tiny-clip zero-shot"} <= set(legend)
    assert (out / "report" / "tables" / "table1_accuracy_zeroshot.csv").is_file()
    assert "zero-shot" in text
    assert (out / "report" / "tables" / "table1_accuracy_linear.csv").is_file()


def test_demo_refuses_too_few_cells(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path), "--per-class", "3"])
    assert result.exit_code == 2 and "--per-class" in result.output
    assert not any(tmp_path.iterdir())


def test_demo_refuses_a_folder_that_is_not_a_demo_folder(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "not an embedcyto demo folder" in result.output and "--out" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_demo_refuses_a_file_as_its_folder(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("mine")
    result = CliRunner().invoke(cli, ["demo", "--out", str(target)])
    assert result.exit_code == 2 and target.read_text() == "mine"
