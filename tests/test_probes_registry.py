"""The probe-method registry: a new method is one module plus one row, and appears everywhere."""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

from embedcyto.cli.main import cli
from embedcyto.errors import ProbeError
from embedcyto.probes import registry
from embedcyto.probes.registry import FULL_DATA, ProbeMethod
from test_probes_runner import make_dataset, write_store

TOY_MODULE = '''
"""A toy probe: nearest class mean on raw features (for the registry test)."""
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class NearestMean(ClassifierMixin, BaseEstimator):
    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.means_ = np.stack([X[y == c].mean(axis=0) for c in self.classes_])
        self.n_means_ = len(self.classes_)
        return self

    def predict_proba(self, X):
        d = ((X[:, None, :] - self.means_[None]) ** 2).sum(axis=2)
        z = np.exp(-(d - d.min(axis=1, keepdims=True)))
        return z / z.sum(axis=1, keepdims=True)
'''


@pytest.fixture
def toy_method(tmp_path, monkeypatch):
    """One module (on sys.path) and one registry row: nothing else is edited."""
    import embedcyto.cli.probe  # noqa: F401  (its --help text is written at import: keep it real)

    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "toy_probe_module.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    row = ProbeMethod("toymean", FULL_DATA, "toy_probe_module:NearestMean", "toy mean",
                      help="nearest raw class mean", chosen=(("means", "n_means_"),),
                      marker="D", linestyle=":")
    monkeypatch.setattr(registry, "PROBE_METHODS", (*registry.PROBE_METHODS, row))
    return row


def test_a_new_method_runs_from_the_cli_and_reaches_the_report(tmp_path, toy_method):
    write_store(tmp_path / "cache", make_dataset(), "alpha")
    res, out = tmp_path / "res", tmp_path / "report"
    result = CliRunner().invoke(cli, ["probe", "--store", str(tmp_path / "cache"), "--results",
                                      str(res), "--methods", "toymean,linear", "--seeds", "1"])
    assert result.exit_code == 0, result.output
    assert any(line.split()[:3] == ["toy", "alpha", "toymean"]
               for line in result.output.splitlines())
    rows = [json.loads(x) for x in (res / "toy.jsonl").read_text().splitlines()]
    toy = next(r for r in rows if r["method"] == "toymean")
    assert toy["chosen"] == {"means": 4} and toy["metrics"]["accuracy"] > 0.9
    assert toy["deterministic"] is False and toy["shots"] is None
    report = CliRunner().invoke(cli, ["report", "--results", str(res), "--runs",
                                      str(tmp_path / "runs"), "--out", str(out)])
    assert report.exit_code == 0, report.output
    assert (out / "tables" / "table1_accuracy_toymean.csv").is_file()
    assert "toy mean on frozen features" in (out / "report.md").read_text()


def test_the_registry_drives_every_list():
    from embedcyto.report import aggregate

    assert registry.default_methods() == ("linear", "knn", "simpleshot")
    assert aggregate.few_shot_methods() == registry.method_names(registry.EPISODIC)
    assert aggregate.method_label("knn") == "kNN" and aggregate.method_label("lora") == "LoRA"
    # zero-shot is deterministic without any fit; every other deterministic row selects on val
    assert all(m.needs_validation for m in registry.probe_methods()
               if m.deterministic and not m.text)
    assert registry.non_default_options("simpleshot", {"centre": "support"}) == {}
    assert registry.non_default_options("simpleshot", {"centre": "train"}) == {"centre": "train"}
    with pytest.raises(ProbeError, match="unknown probe method 'svm'; choose from linear"):
        registry.get_method("svm")


def test_rows_are_validated():
    with pytest.raises(ProbeError, match="kind must be one of"):
        ProbeMethod("x", "sometimes", "m:C", "x")
    with pytest.raises(ProbeError, match="episodic method needs a scorer"):
        ProbeMethod("x", registry.EPISODIC, "m:C", "x")
    with pytest.raises(ProbeError, match="centre='mean' is not one of support, train"):
        registry.get_method("simpleshot").resolve_options({"centre": "mean"})


def test_reading_the_registry_imports_no_estimator():
    import subprocess
    import sys

    code = ("import sys, embedcyto.probes.registry, embedcyto.cli.probe;"
            "print(any(m.startswith('sklearn') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _blobs(seed, n_per_class=20, n_classes=3, dim=12):
    import numpy as np

    rng = np.random.default_rng(seed)
    means = np.random.default_rng(7).normal(size=(n_classes, dim)) * 4
    y = np.repeat(np.arange(n_classes), n_per_class)
    return (means[y] + rng.normal(size=(y.size, dim))).astype("float32"), y


@pytest.mark.parametrize("spec", [m for m in registry.probe_methods() if not m.text],
                         ids=lambda m: m.name)  # text rows: tests/test_probes_text.py
def test_every_registered_method_learns_through_its_row(spec):
    """Each row's estimator (and an episodic row's batched scorer) works as the row says."""
    import numpy as np

    from embedcyto.probes import run_episodes, support_indices

    X, y = _blobs(0, n_per_class=150)  # enough steps for the study head's fixed budget
    X_test, y_test = _blobs(1, n_per_class=10)
    est = spec.estimator_class()(**({"random_state": 0} if spec.seeded else {}))
    fit = (X, y, *_blobs(2, n_per_class=5)) if spec.needs_validation else (X, y)
    assert est.fit(*fit) is est and est.score(X_test, y_test) > 0.9
    if spec.episodic:
        ids = np.array([f"img{i:03d}" for i in range(y.size)])
        out = run_episodes(X, y, ids, X_test, y_test, 2, 4, 1, method=spec.name)
        for episode in range(4):
            idx = support_indices(ids, y, 2, 1, episode)
            ref = spec.estimator_class()().fit(X[idx], y[idx]).score(X_test, y_test)
            assert out["accuracy"][episode] == pytest.approx(ref)
