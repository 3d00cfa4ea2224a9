"""The probe grid on real (tiny) feature stores: rows, skipping, rerun, determinism, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedcyto.datasets.records import Dataset, LabelSpace, Record
from embedcyto.errors import ProbeError
from embedcyto.probes import runner
from embedcyto.probes.runner import ProbeGridConfig, ProbeTask, run_probe_grid
from embedcyto.store import open_writer, store_path


def grid(store_dir=None, **kwargs) -> list[dict]:
    """The probe grid with its configuration given as keywords."""
    return run_probe_grid(ProbeGridConfig(store_dir=store_dir, **kwargs))

CLASSES = ("nilm", "lsil", "hsil", "agc")
LEVEL_MAPS = {"level_1": (0, 1, 1, 2), "level_2": (0, 1, 2, -1)}


def make_dataset(name="toy", n_per_class=(12, 3, 5), splits=("train", "val", "test"),
                 levels=False, rename=None) -> Dataset:
    """Rows per class and split: ``n_per_class`` gives train, val, test counts."""
    records = []
    for label, cls in enumerate(CLASSES):
        for split, count in zip(splits, n_per_class):
            for i in range(count):
                path = f"{cls}/{split}_{i:03d}.png"
                lv = tuple(LEVEL_MAPS[k][label] for k in LEVEL_MAPS) if levels else None
                records.append(Record(path=rename.get(path, path) if rename else path,
                                      label=label, split=split, levels=lv))
    kwargs = {}
    if levels:
        kwargs = {"label_spaces": {"level_1": LabelSpace("level_1", ("neg", "sq", "gl")),
                                   "level_2": LabelSpace("level_2", ("nilm", "lsil", "hsil"))},
                  "level_names": ("level_1", "level_2"), "level_maps": dict(LEVEL_MAPS),
                  "hierarchy": {"nilm": "neg", "lsil": "sq", "hsil": "sq"}}
    return Dataset(name=name, adapter="folder", root=Path("/nonexistent"), classes=CLASSES,
                   records=sorted(records, key=lambda r: r.path), **kwargs)


def write_store(store_dir, dataset, model, *, dim=16, noise=0.7, seed=0, commit=True,
                note="a", force=False) -> Path:
    """Features = class mean + noise, written with the store writer."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(size=(len(CLASSES), dim)) * 2
    labels = np.array([r.label for r in dataset.records])
    feats = (means[labels] + noise * rng.normal(size=(labels.size, dim))).astype(np.float32)
    path = store_path(store_dir, dataset.name, model)
    with open_writer(path, dataset=dataset, provenance={"model": model, "note": note},
                     embed_dim=dim, force=force) as w:
        rows = w.pending_rows()
        w.write(rows[: len(rows) if commit else len(rows) // 2],
                feats[rows[: len(rows) if commit else len(rows) // 2]])
        if commit:
            w.commit()
    return path


GRID = {"methods": ("linear", "knn", "simpleshot"), "shots": (1, 2), "seeds": (1, 2),
        "episodes": 20}


@pytest.fixture
def stores(tmp_path):
    ds = make_dataset()
    write_store(tmp_path / "cache", ds, "alpha", seed=1)
    write_store(tmp_path / "cache", ds, "beta", seed=2, noise=3.0)
    return tmp_path / "cache"


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_grid_writes_one_row_per_task(stores, tmp_path):
    rows = grid(stores, results_dir=tmp_path / "res", **GRID)
    # per model: linear 2 seeds + knn 2 seeds + simpleshot 2 shots x 2 seeds
    assert len(rows) == 2 * (2 + 2 + 4)
    lines = (tmp_path / "res" / "toy.jsonl").read_text().splitlines()
    dump = lambda rs: sorted(json.dumps(r, sort_keys=True) for r in _strip(rs))  # noqa: E731
    assert dump(map(json.loads, lines)) == dump(rows)
    linear = [r for r in rows if r["model"] == "alpha" and r["method"] == "linear"]
    assert [r["seed"] for r in linear] == [1, 2] and all(r["deterministic"] for r in linear)
    assert linear[0]["metrics"] == linear[1]["metrics"]  # honest +-0 over seeds
    assert linear[0]["n_val"] == 12 and linear[0]["chosen"]["selection"] == "validation"
    episodes = [r for r in rows if r["method"] == "simpleshot"]
    assert all(len(r["episode_accuracy"]) == 20 and r["ci"]["accuracy"] >= 0 for r in episodes)
    alpha = next(r for r in rows if r["model"] == "alpha" and r["method"] == "knn")
    beta = next(r for r in rows if r["model"] == "beta" and r["method"] == "knn")
    assert alpha["metrics"]["accuracy"] > beta["metrics"]["accuracy"]  # less noise wins


def test_existing_rows_are_skipped_and_rerun_recomputes(stores, tmp_path, monkeypatch):
    first = grid(stores, results_dir=tmp_path / "res", **GRID)
    calls = []
    original = runner._run_unit

    def counting(*args):
        calls.append(args[1])
        return original(*args)

    monkeypatch.setattr(runner, "_run_unit", counting)
    again = grid(stores, results_dir=tmp_path / "res", **GRID)
    assert calls == [] and _strip(again) == _strip(first)
    grid(stores, results_dir=tmp_path / "res", rerun=True, **GRID)
    assert sorted(calls) == sorted(["linear", "knn", "simpleshot"] * 2)
    lines = (tmp_path / "res" / "toy.jsonl").read_text().splitlines()
    assert len(lines) == len(first)  # replaced, not appended


def test_reextracted_store_is_probed_again(stores, tmp_path, monkeypatch):
    grid(stores, results_dir=tmp_path / "res", **GRID)
    write_store(stores, make_dataset(), "beta", seed=3, note="re-extracted", force=True)
    calls = []
    original = runner._run_unit
    monkeypatch.setattr(runner, "_run_unit", lambda *a: calls.append(a[0].stem) or original(*a))
    rows = grid(stores, results_dir=tmp_path / "res", **GRID)
    assert set(calls) == {"beta"} and len(rows) == 16


def test_rows_do_not_depend_on_n_jobs(stores, tmp_path):
    one = grid(stores, results_dir=tmp_path / "a", n_jobs=1, **GRID)
    two = grid(stores, results_dir=tmp_path / "b", n_jobs=2, **GRID)
    assert _strip(one) == _strip(two)


def test_refuses_an_incomplete_store(tmp_path):
    ds = make_dataset()
    write_store(tmp_path, ds, "alpha")
    write_store(tmp_path, ds, "half", commit=False)
    with pytest.raises(ProbeError, match="incomplete"):
        grid(tmp_path, models=["alpha", "half"], results_dir=tmp_path / "r", **GRID)
    rows = grid(tmp_path, results_dir=tmp_path / "r", **GRID)  # default: complete ones
    assert {r["model"] for r in rows} == {"alpha"}


def test_refuses_stores_of_different_images(tmp_path):
    write_store(tmp_path, make_dataset(), "alpha")
    write_store(tmp_path, make_dataset(rename={"lsil/test_000.png": "lsil/test_999.png"}), "beta")
    with pytest.raises(ProbeError, match=r"different images or splits.*\[alpha\] vs \[beta\]"):
        grid(tmp_path, results_dir=tmp_path / "r", **GRID)


def test_refuses_a_missing_validation_split(tmp_path):
    write_store(tmp_path, make_dataset(n_per_class=(12, 5), splits=("train", "test")), "alpha")
    with pytest.raises(ProbeError, match="no validation rows.*linear, knn"):
        grid(tmp_path, results_dir=tmp_path / "r", **GRID)
    rows = grid(tmp_path, results_dir=tmp_path / "r",
                          **{**GRID, "methods": ("simpleshot",)})
    assert len(rows) == 4


def test_refuses_too_many_shots_naming_the_class_before_any_work(tmp_path, monkeypatch):
    write_store(tmp_path, make_dataset(), "alpha")
    monkeypatch.setattr(runner, "_run_unit", lambda *a: pytest.fail("work started"))
    with pytest.raises(ProbeError, match="shots=16 fits no dataset .toy: class 'nilm' has 12 "
                                         "training images.*lower shots to at most 12"):
        grid(tmp_path, results_dir=tmp_path / "r", **{**GRID, "shots": (2, 16)})


def test_bad_options_fail_when_the_config_is_built():
    for bad, match in [({"shots": (0,)}, "shots must be at least 1"),
                       ({"seeds": ()}, "at least one seed"),
                       ({"episodes": 0}, "episodes must be at least 1"),
                       ({"methods": ("svm",)}, "unknown probe method 'svm'"),
                       ({"options": {"simpleshot": {"centre": "x"}}}, "centre='x' is not one of")]:
        with pytest.raises(ProbeError, match=match):
            runner.ProbeGridConfig(**bad)


def test_default_shots_a_dataset_cannot_supply_are_skipped_with_one_warning(tmp_path, caplog):
    write_store(tmp_path, make_dataset(n_per_class=(3, 3, 5)), "alpha")  # 3 training per class
    write_store(tmp_path, make_dataset(name="big", n_per_class=(9, 3, 5)), "alpha")
    with caplog.at_level("WARNING"):
        rows = grid(tmp_path, results_dir=tmp_path / "r", methods=("simpleshot",), seeds=(1,),
                    episodes=3)
    shots = {d: sorted(r["shots"] for r in rows if r["dataset"] == d) for d in ("toy", "big")}
    assert shots == {"toy": [1, 2], "big": [1, 2, 4, 8]}
    warnings = [r.getMessage() for r in caplog.records if "skipping shots" in r.getMessage()]
    assert warnings == ["big: skipping shots 16: class 'nilm' has only 9 training images",
                        "toy: skipping shots 4,8,16: class 'nilm' has only 3 training images"]
    # an explicit value that one dataset supports runs there and is skipped on the other
    rows = grid(tmp_path, results_dir=tmp_path / "r2", methods=("simpleshot",), seeds=(1,),
                episodes=3, shots=(2, 8))
    assert sorted((r["dataset"], r["shots"]) for r in rows) == [
        ("big", 2), ("big", 8), ("toy", 2)]


def test_hierarchical_rows_carry_levels(tmp_path):
    write_store(tmp_path, make_dataset(levels=True), "alpha")
    rows = grid(tmp_path, results_dir=tmp_path / "r",
                          **{**GRID, "seeds": (1,), "shots": (2,)})
    linear = next(r for r in rows if r["method"] == "linear")
    assert linear["levels"]["level_1"]["n"] == 4 * 5
    assert linear["levels"]["level_2"]["n"] == 3 * 5  # agc rows have no level-2 label
    assert linear["metrics"]["accuracy"] == 1.0  # well separated: every level is right too
    assert linear["levels"]["level_1"]["accuracy"] == 1.0 == linear["levels"]["average"]
    shot = next(r for r in rows if r["method"] == "simpleshot")
    assert set(shot["levels"]) == {"level_1", "level_2", "average"}


def test_task_is_frozen_and_sortable():
    t = ProbeTask("d", "m", "simpleshot", 4, 1)
    with pytest.raises(AttributeError):
        t.seed = 2  # type: ignore[misc]
    assert t.key()["shots"] == 4


def test_list_valued_options_are_accepted_and_rows_are_reused(stores, tmp_path):
    results = tmp_path / "results"
    kwargs = dict(store_dir=stores, datasets=["toy"], models=["alpha"], methods=("linear",),
                  shots=(1,), seeds=(1,), episodes=5, results_dir=results,
                  options={"linear": {"Cs": [0.1, 1.0]}})
    first = grid(**kwargs)
    assert len(first) == 1 and first[0]["options"] == {"Cs": [0.1, 1.0]}
    lines = (results / "toy.jsonl").read_text().splitlines()
    second = grid(**kwargs)
    assert _strip(second) == _strip(first)
    assert (results / "toy.jsonl").read_text().splitlines() == lines


def test_a_unit_reads_and_checks_each_split_once(stores, monkeypatch):
    from embedcyto.probes import evaluate
    from embedcyto.store import load_features

    checked = []
    check = evaluate.check_finite
    monkeypatch.setattr(evaluate, "check_finite",
                        lambda X, ids, where: (checked.append(where), check(X, ids, where))[1])
    feats = load_features(store_path(stores, "toy", "alpha"))
    runs = [(1, 1), (1, 2), (2, 1), (2, 2)]
    rows = evaluate.evaluate_unit(feats, "simpleshot", runs, 5, {})
    assert sorted(checked) == ["test split", "train split"]  # not once per (shots, seed)
    alone = [evaluate.evaluate_episodes(feats, "simpleshot", k, s, 5, {}) for k, s in runs]
    assert [r["episode_accuracy"] for r in rows] == [r["episode_accuracy"] for r in alone]
    cache = {}
    evaluate.split_arrays(feats, "train", cache=cache)
    with pytest.raises(ValueError, match="read-only"):  # a probe cannot change the next run's rows
        cache["train"]["X"][0, 0] = 1.0


def test_units_of_the_largest_dataset_start_first(tmp_path, monkeypatch):
    small, large = make_dataset("asmall", n_per_class=(8, 8, 8)), make_dataset(
        "zlarge", n_per_class=(30, 30, 30))  # the grid's own order would start "asmall"
    for ds in (small, large):
        write_store(tmp_path / "cache", ds, "alpha")
    started = []
    run_unit = runner._run_unit
    monkeypatch.setattr(runner, "_run_unit", lambda path, method, *a: (
        started.append((path.parent.name, method)), run_unit(path, method, *a))[1])
    rows = grid(tmp_path / "cache", methods=("knn", "simpleshot"), shots=(1,), seeds=(1,),
                episodes=3, results_dir=tmp_path / "results", n_jobs=1, backend="threading")
    assert started == [("zlarge", "knn"), ("zlarge", "simpleshot"), ("asmall", "knn"),
                       ("asmall", "simpleshot")]
    assert [r["dataset"] for r in rows] == ["asmall", "asmall", "zlarge", "zlarge"]  # sorted
