"""The study's recipes: smoke runs end to end (with their reports), resuming, and the refusal
to start without datasets or weights."""

from __future__ import annotations

import csv
import importlib
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("bcfc", "mlcc", "sipakmed", "hicervix")
MODELS = ("tiny-clip", "tiny-vit")


@pytest.fixture(scope="module")
def recipes():
    sys.path.insert(0, str(ROOT))
    try:
        yield {name: importlib.import_module(f"pipelines.{name}")
               for name in ("exp1_linear", "exp2_lora_fewshot", "exp3_hicervix_fractions")}
    finally:
        sys.path.remove(str(ROOT))


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke")


def csv_rows(path):
    with path.open(newline="") as handle:
        return {row[0]: row for row in csv.reader(handle)}


def legend_of(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.size[0] > 300 and image.size[1] > 200
        return image.info["Description"].split("\n")


@pytest.mark.slow  # 8 extractions, probes and a report; the refusal tests below keep the recipes in the fast profile
def test_exp1_smoke_writes_table1_for_every_model_and_dataset(recipes, smoke_dir, capsys):
    assert recipes["exp1_linear"].main(["--smoke", "--smoke-dir", str(smoke_dir)]) == 0
    out = capsys.readouterr().out
    assert "extract: 8 stores, 0 done, 8 to run" in out
    report = smoke_dir / "report" / "exp1_linear"
    for method in ("linear", "study_head"):
        for metric in ("accuracy", "balanced_accuracy"):
            rows = csv_rows(report / "tables" / f"table1_{metric}_{method}.csv")
            assert set(rows) == {"model", *MODELS, "average"}
            for model in MODELS:
                header = rows["model"]
                for dataset in DATASETS:
                    assert rows[model][header.index(f"{dataset}_mean")] != ""
    levels = csv_rows(report / "tables" / "hicervix_levels_linear.csv")
    assert set(levels) == {"model", *MODELS, "HierSwin (published)"}
    for dataset in DATASETS:
        legend = legend_of(report / "figures" / f"fewshot_{dataset}.png")
        for model in MODELS:
            assert f"{model} SimpleShot" in legend
            assert f"{model} linear probe (all data)" in legend
    text = (report / "report.md").read_text()
    assert "Random-weight models (tiny-clip, tiny-vit)" in text


@pytest.mark.slow  # reads the smoke run above
def test_exp1_again_has_nothing_left_to_do(recipes, smoke_dir, capsys):
    argv = ["--smoke", "--smoke-dir", str(smoke_dir), "--dry-run"]
    assert recipes["exp1_linear"].main(argv) == 0
    assert "extract: 8 stores, 8 done, 0 to run" in capsys.readouterr().out


@pytest.mark.slow  # 16 LoRA runs
def test_exp2_smoke_adds_lora_lines_beside_the_linear_probe(recipes, smoke_dir, capsys):
    assert recipes["exp2_lora_fewshot"].main(["--smoke", "--smoke-dir", str(smoke_dir)]) == 0
    out = capsys.readouterr().out
    assert "lora: 16 runs, 0 done, 16 to run" in out
    report = smoke_dir / "report" / "exp2_lora_fewshot"
    for dataset in DATASETS:
        rows = csv_rows(report / "tables" / f"fewshot_{dataset}.csv")
        for model in MODELS:
            assert rows[f"{model} · LoRA"][1] != ""  # 1 shot
            assert rows[f"{model} · linear probe"][-3] != ""  # the "all" column
        legend = legend_of(report / "figures" / f"fewshot_{dataset}.png")
        assert {f"{m} LoRA" for m in MODELS} <= set(legend)
    assert recipes["exp2_lora_fewshot"].main(
        ["--smoke", "--smoke-dir", str(smoke_dir), "--dry-run"]) == 0
    assert "lora: 16 runs, 16 done, 0 to run" in capsys.readouterr().out
    # the recipe is a workspace: the command line sees the same runs, all done
    from click.testing import CliRunner

    from embedcyto.cli.main import cli

    saved = report / "embedcyto.toml"
    plan = CliRunner().invoke(cli, ["--workspace", str(saved), "lora", "--dry-run"])
    assert plan.exit_code == 0, plan.output
    assert "lora: 16 runs, 16 done, 0 to run" in plan.output
    status = CliRunner().invoke(cli, ["--workspace", str(saved), "status"])
    assert status.exit_code == 0 and status.output.count("complete") == 8, status.output


@pytest.mark.slow  # LoRA fraction runs
def test_exp3_smoke_fraction_table_and_figure_against_hierswin(recipes, smoke_dir):
    assert recipes["exp3_hicervix_fractions"].main(
        ["--smoke", "--smoke-dir", str(smoke_dir)]) == 0
    report = smoke_dir / "report" / "exp3_hicervix_fractions"
    rows = csv_rows(report / "tables" / "fractions_hicervix_tiny-clip.csv")
    assert set(rows) == {"fraction", "50 %", "100 %", "HierSwin (published)"}
    assert rows["fraction"][1:4] == ["level_1_mean", "level_1_std", "level_1_n"]
    assert rows["HierSwin (published)"][1] == "92.080"
    # seeds 1-3 in every cell, and the study's 25-class accuracy beside the official levels
    assert rows["fraction"][-3:] == ["study25_mean", "study25_std", "study25_n"]
    assert rows["50 %"][3] == "3" and rows["100 %"][-1] == "3"
    # the authors' 100 epochs, scaled down to 2 for the smoke run
    config = json.loads((smoke_dir / "runs" / "lora" / "hicervix" / "tiny-clip" / "frac-50"
                         / "seed-3" / "config.json").read_text())
    assert config["config"]["epochs"] == 2 and config["config"]["settings"]["rank"] == 16
    assert config["config"]["precision"] == "fp32"  # the authors' precision on a CPU
    legend = legend_of(report / "figures" / "fractions_hicervix.png")
    assert legend == ["tiny-clip LoRA", "HierSwin (published)"]


def test_without_datasets_and_weights_nothing_starts(recipes, tmp_path, capsys):
    store = tmp_path / "store"
    code = recipes["exp1_linear"].main(["--data-root", str(tmp_path / "data"), "--store",
                                        str(store), "--results", str(tmp_path / "results")])
    assert code == 2
    err = capsys.readouterr().err
    assert "9 input(s) missing (nothing was run)" in err
    for dataset in DATASETS:
        assert f"dataset {dataset}: {tmp_path / 'data' / dataset} is missing" in err
    for model in ("clip", "vit", "biomedclip", "quilt", "uni"):
        assert f"weights of {model} " in err
    assert "sipakmed.html" in err and "hf download" in err and "gated" in err
    assert not store.exists() and not (tmp_path / "results").exists()


def test_weights_missing_alone_are_listed(recipes, tmp_path, capsys):
    (tmp_path / "data" / "hicervix").mkdir(parents=True)
    (tmp_path / "data" / "hicervix" / "train.csv").write_text("x\n")
    code = recipes["exp3_hicervix_fractions"].main(["--data-root", str(tmp_path / "data"),
                                                    "--store", str(tmp_path / "store")])
    assert code == 2
    err = capsys.readouterr().err
    assert "1 input(s) missing" in err and "weights of clip-l14" in err
    assert "dataset hicervix" not in err
    assert not (tmp_path / "store").exists()
    looked = err.split("Looked in:\n", 1)[1].split("To get them:")[0]
    places = [line.strip() for line in looked.splitlines() if line.strip().startswith("- ")]
    assert any("weights folder" in p for p in places) and any("Hugging Face cache" in p
                                                            for p in places)
    assert "--weights PATH" not in err and "weights=PATH" not in err
    assert "then pass --weights-dir " in err and "`weights_dir=" not in err  # the recipe's flag


def test_smoke_never_writes_into_real_data(recipes, tmp_path, capsys):
    real = tmp_path / "data" / "bcfc"
    real.mkdir(parents=True)
    (real / "benign").mkdir()
    code = recipes["exp1_linear"].main(["--smoke", "--data-root", str(tmp_path / "data"),
                                        "--smoke-dir", str(tmp_path / "smoke"),
                                        "--datasets", "bcfc"])
    assert code == 2
    assert "did not generate" in capsys.readouterr().err
    assert [p.name for p in real.iterdir()] == ["benign"]


def test_recipes_default_to_the_authors_precision(recipes, monkeypatch):
    import torch

    import embedcyto.backbones
    from pipelines.common import make_parser, precision_for, settings_from_args

    args = make_parser("exp3_hicervix_fractions", "").parse_args(["--smoke", "--device", "cpu"])
    s = settings_from_args("exp3_hicervix_fractions", args)
    assert s.precision == "authors"
    assert precision_for(s, "tiny-clip") == "fp32" and precision_for(s, "tiny-vit") == "fp32"
    monkeypatch.setattr(embedcyto.backbones, "resolve_device", lambda d: torch.device("cuda"))
    assert precision_for(s, "clip-l14") == "fp16"  # CLIP: fp16 on a GPU, as the authors ran it
    assert precision_for(s, "uni") == "fp32"
    args = make_parser("exp3_hicervix_fractions", "").parse_args(["--precision", "auto"])
    assert precision_for(settings_from_args("exp3_hicervix_fractions", args), "clip") == "auto"
