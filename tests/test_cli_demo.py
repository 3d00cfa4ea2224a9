"""``embedcyto demo`` end to end: generated data, random weights, every stage, the report."""

from __future__ import annotations

from click.testing import CliRunner
from PIL import Image

from embedcyto.cli.main import cli


def test_demo_runs_every_stage_and_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.count("RANDOM-WEIGHT models") == 2  # said at the start and at the end
    assert "embedcyto extract --model clip" in text  # what to run on real data
    report = (out / "report" / "report.md").read_text()
    for model in ("tiny-clip", "tiny-vit"):
        assert f"| {model} |" in report
        assert f"| {model} · LoRA |" in report and f"| {model} · SimpleShot |" in report
    assert "Random-weight models" in report
    runs = sorted(p.name for p in (out / "runs" / "lora" / "sipakmed" / "tiny-clip").iterdir())
    assert runs == ["shots-1", "shots-2", "shots-4"]
    figure = out / "report" / "figures" / "fewshot_sipakmed.png"
    with Image.open(figure) as image:
        assert image.format == "PNG"
        legend = image.info["Description"].split("\n")
    # LoRA, SimpleShot and linear-probe line for each model; LP++ and zero-shot for tiny-clip
    assert len(legend) == 8 and {"tiny-clip LP++", "tiny-clip zero-shot"} <= set(legend)
    assert (out / "report" / "tables" / "table1_accuracy_zeroshot.csv").is_file()
    assert "zero-shot" in text
    assert (out / "report" / "tables" / "table1_accuracy_linear.csv").is_file()


def test_demo_refuses_too_few_cells(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path), "--per-class", "3"])
    assert result.exit_code == 2 and "--per-class" in result.output
    assert not any(tmp_path.iterdir())
