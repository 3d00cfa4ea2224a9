"""Probe grids give the same rows whatever the joblib backend and job count (loky, threads, Dask)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from embedcyto import parallel
from embedcyto.cli.main import cli
from embedcyto.datasets.records import Dataset, Record
from embedcyto.errors import EmbedcytoError
from embedcyto.parallel import joblib_backend, resolve_n_jobs
from embedcyto.probes.runner import ProbeGridConfig, run_probe_grid
from embedcyto.store import open_writer, store_path


def grid(store_dir=None, **kwargs) -> list[dict]:
    """The probe grid with its configuration given as keywords."""
    return run_probe_grid(ProbeGridConfig(store_dir=store_dir, **kwargs))

CLASSES = ("nilm", "lsil", "hsil")
GRID = {"methods": ("linear", "knn", "simpleshot"), "shots": (1, 2), "seeds": (1, 2),
        "episodes": 10}


def _store(store_dir: Path, model: str, seed: int) -> None:
    """A store of class means + noise: 10 train, 3 val, 4 test images per class."""
    records = [Record(path=f"{c}/{s}_{i}.png", label=k, split=s)
               for k, c in enumerate(CLASSES) for s, n in (("train", 10), ("val", 3), ("test", 4))
               for i in range(n)]
    dataset = Dataset(name="toy", adapter="folder", root=Path("/nonexistent"), classes=CLASSES,
                      records=sorted(records, key=lambda r: r.path))
    rng = np.random.default_rng(seed)
    labels = np.array([r.label for r in dataset.records])
    feats = rng.normal(size=(len(CLASSES), 8))[labels] * 2 + rng.normal(size=(len(labels), 8))
    with open_writer(store_path(store_dir, "toy", model), dataset=dataset,
                     provenance={"model": model}, embed_dim=8) as writer:
        writer.write(writer.pending_rows(), feats.astype(np.float32))
        writer.commit()


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backends") / "cache"
    _store(folder, "alpha", 1)
    _store(folder, "beta", 2)
    return folder


def _rows(stores, out: Path, **kwargs) -> list[dict]:
    rows = grid(stores, results_dir=out, **GRID, **kwargs)
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture(scope="module")
def sequential(stores, tmp_path_factory):
    return _rows(stores, tmp_path_factory.mktemp("seq"), n_jobs=1)


def test_grid_has_rows_for_both_models(sequential):
    assert {r["model"] for r in sequential} == {"alpha", "beta"}
    assert len(sequential) == 2 * (2 + 2 + 4)
    assert all(0 <= r["metrics"]["accuracy"] <= 1 for r in sequential)


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_local_backends_give_the_sequential_rows(stores, sequential, tmp_path, backend):
    assert _rows(stores, tmp_path, n_jobs=2, backend=backend) == sequential


@pytest.mark.slow  # starts a local Dask cluster; the loky and threading backends stay fast
def test_dask_local_cluster_gives_the_loky_rows(stores, tmp_path, monkeypatch):
    pytest.importorskip("distributed", reason="dask.distributed is not installed "
                                              "(pip install 'embedcyto[dask]')")
    from dask.distributed import get_task_stream

    real, seen = parallel._dask_client, {}

    @contextlib.contextmanager
    def watched(scheduler, n_jobs):
        with real(scheduler, n_jobs) as client:
            with get_task_stream(client) as stream:
                yield client
            seen["tasks"] = len(stream.data)

    monkeypatch.setattr(parallel, "_dask_client", watched)
    loky = _rows(stores, tmp_path / "loky", n_jobs=2, backend="loky")
    dask = _rows(stores, tmp_path / "dask", n_jobs=2, backend="dask")
    assert seen["tasks"] > 0  # the work really ran on the Dask workers
    assert dask == loky


def test_unknown_backend_and_misplaced_scheduler_are_refused(stores, tmp_path):
    with pytest.raises(EmbedcytoError, match="unknown joblib backend 'spark'"):
        grid(stores, results_dir=tmp_path, backend="spark", **GRID)
    with pytest.raises(EmbedcytoError, match="dask and ray backends only"):
        grid(stores, results_dir=tmp_path, backend="loky", scheduler="tcp://x:1",
                       **GRID)


@pytest.mark.parametrize("backend,module", [("dask", "dask.distributed"), ("ray", "ray")])
def test_missing_cluster_package_names_the_extra(monkeypatch, backend, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    with pytest.raises(EmbedcytoError, match=rf"pip install 'embedcyto\[{backend}\]'"), \
            joblib_backend(backend):
        pass


def test_n_jobs_defaults_to_one_locally_and_every_worker_on_a_cluster():
    assert resolve_n_jobs(None, None) == resolve_n_jobs("loky", None) == 1
    assert resolve_n_jobs("dask", None) == resolve_n_jobs("ray", None) == -1
    assert resolve_n_jobs("threading", 3) == 3
    with pytest.raises(EmbedcytoError, match="must not be 0"):
        resolve_n_jobs("loky", 0)


def test_cli_backend_option(stores, tmp_path, sequential):
    runner = CliRunner()
    ok = runner.invoke(cli, ["probe", "--store", str(stores), "--results", str(tmp_path),
                             "--backend", "threading", "--n-jobs", "2", "--episodes", "10",
                             "--shots", "1,2", "--seeds", "1,2"])
    assert ok.exit_code == 0, ok.output
    assert f"{len(sequential)} result rows" in ok.output
    bad = runner.invoke(cli, ["probe", "--store", str(stores), "--results", str(tmp_path / "b"),
                              "--scheduler", "tcp://localhost:8786"])
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert "dask and ray backends only" in bad.output
