"""Probes that are never silently wrong: concurrent writers, rebuilt stores, NaN/Inf, huge values.

Run alone with ``pytest -m reliability``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from embedcyto.errors import ProbeError
from embedcyto.probes import KNNProbe, LinearProbe, SimpleShot, StudyLinearHead, runner
from embedcyto.probes.checks import store_identity
from embedcyto.store import load_features
from test_probes_runner import grid, make_dataset, write_store

pytestmark = pytest.mark.reliability

GRID = {"methods": ("knn", "simpleshot"), "shots": (1, 2), "episodes": 5}


def _with_bad_rows(monkeypatch, rows: dict[int, float]) -> None:
    """Make the store reader return features with some entries replaced (a faulty store as the
    probes would see it, whatever checks the store layer itself adds)."""
    import embedcyto.store

    original = embedcyto.store.load_features

    def tampered(*args, **kwargs):
        feats = original(*args, **kwargs)
        X = np.array(feats.X)
        for row, value in rows.items():
            X[row, 0] = value
        object.__setattr__(feats, "X", X) if hasattr(feats, "__dataclass_fields__") \
            else setattr(feats, "X", X)
        return feats

    monkeypatch.setattr(embedcyto.store, "load_features", tampered)


@pytest.mark.slow
def test_three_concurrent_probe_processes_lose_no_row(tmp_path):
    ds = make_dataset()
    for i, model in enumerate(("alpha", "beta", "gamma")):
        write_store(tmp_path / "cache", ds, model, seed=i)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_probes_runner import grid
        seed = int(sys.argv[1])
        grid({str(tmp_path / 'cache')!r}, results_dir={str(tmp_path / 'res')!r},
             methods=("knn", "simpleshot"), shots=(1, 2, 4), seeds=(seed,),
             episodes=5)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(s)], env=env)
             for s in (1, 2, 3)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    rows = [json.loads(x) for x in (tmp_path / "res" / "toy.jsonl").read_text().splitlines()]
    # 3 models x 3 seeds x (knn + simpleshot at 3 shots)
    assert len(rows) == 3 * 3 * 4
    assert len({(r["model"], r["method"], r["shots"], r["seed"]) for r in rows}) == len(rows)
    assert not list((tmp_path / "res").glob("*.tmp-*"))


def test_rows_carry_the_identity_of_the_store_actually_read(tmp_path, monkeypatch):
    ds = make_dataset()
    write_store(tmp_path / "cache", ds, "alpha")
    before = store_identity(load_features(tmp_path / "cache" / "toy" / "alpha.h5").provenance)
    original, rebuilt = runner._run_unit, []

    def rebuilt_meanwhile(path, *args):
        if not rebuilt:  # once, after the grid inspected the store and before any unit read it
            write_store(tmp_path / "cache", ds, "alpha", seed=5, note="rebuilt", force=True)
            rebuilt.append(path)
        return original(path, *args)

    monkeypatch.setattr(runner, "_run_unit", rebuilt_meanwhile)
    rows = grid(tmp_path / "cache", results_dir=tmp_path / "res", seeds=(1,), **GRID)
    actual = store_identity(load_features(tmp_path / "cache" / "toy" / "alpha.h5").provenance)
    assert actual != before
    assert rows and {r["store_identity"] for r in rows} == {actual}


def test_non_finite_features_are_refused_before_any_work_naming_rows(tmp_path, monkeypatch):
    path = write_store(tmp_path / "cache", make_dataset(), "alpha")
    ids = load_features(path).ids
    _with_bad_rows(monkeypatch, {3: np.nan, 7: np.inf})
    with pytest.raises(ProbeError, match=rf"2 row\(s\) hold NaN or infinite.*{ids[3]}, "
                                         rf"{ids[7]}.*`embedcyto extract` with `force=True`"):
        grid(tmp_path / "cache", results_dir=tmp_path / "res", seeds=(1,), **GRID)
    assert not (tmp_path / "res").exists()  # refused before any probe ran


@pytest.mark.parametrize("estimator", [LinearProbe(Cs=[1.0]), KNNProbe(ks=(1,)), SimpleShot(),
                                       StudyLinearHead(epochs=1)])
def test_estimators_refuse_nan_with_a_probe_error(estimator):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 4)), np.repeat([0, 1], 10)
    X[5, 2] = np.nan
    with pytest.raises(ProbeError, match=r"X contains NaN or inf values in 1 row\(s\) \(row 5\)"):
        estimator.fit(X, y)
    X[5, 2] = 0.0
    est = estimator.fit(X, y)
    X[0, 0] = -np.inf
    with pytest.raises(ProbeError, match=r"row 0"):
        est.predict(X)


def test_absurd_values_are_refused_naming_rows(tmp_path, monkeypatch):
    path = write_store(tmp_path / "cache", make_dataset(), "alpha")
    ids = load_features(path).ids
    _with_bad_rows(monkeypatch, {2: 3e38, 9: -1e20})
    with pytest.raises(ProbeError, match=rf"2 row\(s\) hold absurdly large .*{ids[2]}, {ids[9]}"):
        grid(tmp_path / "cache", results_dir=tmp_path / "res", seeds=(1,), **GRID)
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_probe_standardises_huge_values_without_overflow(dtype):
    rng = np.random.default_rng(0)
    means = rng.normal(size=(4, 16)) * 2
    y, y_val = np.repeat(np.arange(4), 20), np.repeat(np.arange(4), 5)
    X = means[y] + 0.7 * rng.normal(size=(80, 16))
    X_val = means[y_val] + 0.7 * rng.normal(size=(20, 16))
    X[:3, 0] = 3e38  # float32 sums of this column overflow
    probe = LinearProbe().fit(X.astype(dtype), y, X_val.astype(dtype), y_val)
    assert np.isfinite(probe.mean_).all() and np.isfinite(probe.scale_).all()
    assert probe.score(X_val.astype(dtype), y_val) > 0.9
