"""``embedcyto compare`` and the report's "Which model?" section on generated stores."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from embedcyto.cli.main import cli
from embedcyto.compare import compare_dataset
from embedcyto.probes.runner import run_probe_grid
from test_probes_runner import make_dataset, write_store


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """alpha and its exact copy (same features), and a much noisier beta; 160 test images."""
    base = tmp_path_factory.mktemp("compare")
    ds = make_dataset(n_per_class=(30, 10, 40))
    for model, noise in (("alpha", 1.2), ("alphacopy", 1.2), ("beta", 4.0)):
        write_store(base / "cache", ds, model, seed=1, noise=noise)
    run_probe_grid(base / "cache", results_dir=base / "res", methods=("knn", "simpleshot"),
                   shots=(2,), seeds=(1, 2), episodes=30)
    return base


def test_identical_models_share_a_group_and_the_worse_model_is_ranked_below(results):
    comps = {c.method: c for c in compare_dataset("toy", results / "res", results / "runs")}
    for comp in comps.values():
        assert comp.groups[0] == ["alpha", "alphacopy"] or comp.groups[0] == ["alphacopy",
                                                                               "alpha"]
        assert comp.groups[1:] == [["beta"]]
        same = next(p for p in comp.pairs if {p.a, p.b} == {"alpha", "alphacopy"})
        assert same.diff == 0 and same.p_holm == 1.0 and not same.significant
        worse = next(p for p in comp.pairs if {p.a, p.b} == {"alpha", "beta"})
        assert worse.a == "alpha" and worse.diff > 0 and worse.significant
    assert comps["knn"].unit == "images" and comps["knn"].pairs[0].mcnemar_p is not None
    assert comps["simpleshot"].unit == "episodes" and comps["simpleshot"].pairs[0].n == 60


def test_compare_command_prints_the_ranking(results):
    out = CliRunner().invoke(cli, ["compare", "--dataset", "toy", "--method", "knn",
                                   "--results", str(results / "res"), "--runs",
                                   str(results / "runs")])
    assert out.exit_code == 0, out.output
    assert "toy — knn (paired over images" in out.output and "simpleshot" not in out.output
    lines = out.output.splitlines()
    group_of = {ln.split()[1]: ln.split()[0] for ln in lines if ln.strip().endswith("%")}
    assert group_of == {"alpha": "1", "alphacopy": "1", "beta": "2"}
    assert any(ln.strip().startswith("alpha vs beta") and ln.endswith("*") for ln in lines)


def test_compare_without_two_models_is_a_clean_error(results, tmp_path):
    out = CliRunner().invoke(cli, ["compare", "--dataset", "toy", "--shots", "16",
                                   "--results", str(results / "res")])
    assert out.exit_code == 1 and "nothing to compare" in out.output
    assert "Traceback" not in out.output


def test_report_has_a_which_model_section_with_csv_tables(results, tmp_path):
    out = CliRunner().invoke(cli, ["report", "--results", str(results / "res"), "--runs",
                                   str(results / "runs"), "--out", str(tmp_path / "rep")])
    assert out.exit_code == 0, out.output
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "## Which model?" in text and "#### toy: simpleshot, 2 shots" in text
    with open(tmp_path / "rep" / "tables" / "rank_toy_knn.csv") as handle:
        rank = list(csv.DictReader(handle))
    assert [r["group"] for r in rank] == ["1", "1", "2"] and rank[2]["model"] == "beta"
    with open(tmp_path / "rep" / "tables" / "pairs_toy_simpleshot_2shot.csv") as handle:
        pairs = list(csv.DictReader(handle))
    assert len(pairs) == 3 and {p["test"] for p in pairs} == {"paired-t"}
