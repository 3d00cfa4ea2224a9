"""The probe grid: every (dataset × model × method × shots × seed) on cached features.

One JSON line per task goes to ``<results_dir>/<dataset>.jsonl`` (default ``results/probe``).
A row is keyed by its task and by the identity of the store it was computed from (a hash of the
store's full provenance, creation time included), so re-running the same grid only computes
what is missing, and a re-extracted store is probed again. ``rerun=True`` recomputes everything.

Work is split into units of (dataset, model, method), each loading its store once, and fanned
out with ``joblib.Parallel(n_jobs)``; results come back in task order and every task seeds its
own generators, so the rows do not depend on ``n_jobs`` or on the joblib backend (a Dask or Ray
cluster through ``joblib.parallel_config``).

Seeds: "linear" (L-BFGS) and "knn" with a validation split have no randomness, so they are
computed once and written once per seed with ``"deterministic": true`` — the mean ± std over
seeds is then an honest ± 0. Episode methods and "study_head" depend on the seed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedcyto.errors import ProbeError, StoreError
from embedcyto.predictions import keep_row_predictions
from embedcyto.probes.evaluate import DETERMINISTIC, EPISODE_METHODS, METHODS, evaluate_unit

log = logging.getLogger(__name__)

DEFAULT_RESULTS_DIR = Path("results") / "probe"
DEFAULT_METHODS = ("linear", "knn", "simpleshot")
DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)


@dataclass(frozen=True)
class ProbeTask:
    """One row of results: which features, which method, how many shots, which seed.

    ``shots`` is None for full-data probes; ``options`` are the estimator's keyword arguments as
    sorted (name, value) pairs so the task stays hashable.
    """

    dataset: str
    model: str
    method: str
    shots: int | None
    seed: int | None
    options: tuple[tuple[str, Any], ...] = field(default=())

    def key(self) -> dict[str, Any]:
        """The JSON-able identity of the task (without the store)."""
        return {"dataset": self.dataset, "model": self.model, "method": self.method,
                "shots": self.shots, "seed": self.seed, "options": dict(self.options)}

    def sort_key(self) -> tuple:
        return (self.dataset, self.model, METHODS.index(self.method), self.shots or 0,
                self.seed if self.seed is not None else -1)


def row_key(row: Mapping[str, Any]) -> str:
    """What identifies a result row: its task and the store identity it was computed on."""
    keys = ("dataset", "model", "method", "shots", "seed", "options", "store_identity")
    return json.dumps({k: row.get(k) for k in keys}, sort_keys=True)


def _task_key(row: Mapping[str, Any]) -> str:
    return row_key({**row, "store_identity": None})


def store_identity(provenance: Mapping[str, Any]) -> str:
    """sha256 of a store's whole provenance: any re-extraction gives a new identity."""
    return hashlib.sha256(json.dumps(provenance, sort_keys=True, default=str).encode()).hexdigest()


def _row_signature(features) -> str:
    """Hash of the sorted (id, split, label) triples: equal for stores of the same rows."""
    ids = np.asarray(features.ids).astype(str)
    order = np.argsort(ids, kind="stable")
    digest = hashlib.sha256()
    for part in (ids[order], np.asarray(features.splits).astype(str)[order],
                 np.asarray(features.labels)[order].astype(str)):
        digest.update("\n".join(part.tolist()).encode())
    return digest.hexdigest()


def _models_for(store_dir: Path, dataset: str, models: Sequence[str] | None) -> list[str]:
    from embedcyto.store import list_stores

    entries = [s for s in list_stores(store_dir) if s.dataset == dataset]
    if models:
        return list(models)
    complete = sorted({s.model for s in entries if s.state == "complete"})
    others = [f"{s.model} ({s.status})" for s in entries if s.state != "complete"]
    if others:
        log.warning("%s: skipping stores that are not complete: %s", dataset, ", ".join(others))
    if not complete:
        raise ProbeError(f"no complete feature store for dataset {dataset!r} in {store_dir}; "
                         f"run `embedcyto extract --dataset {dataset} --model NAME` first")
    return complete


def _datasets_in(store_dir: Path) -> list[str]:
    from embedcyto.store import list_stores

    names = sorted({s.dataset for s in list_stores(store_dir) if s.state == "complete"})
    if not names:
        raise ProbeError(f"no complete feature store in {store_dir}; run `embedcyto extract` "
                         "first or point --store at the folder holding the stores")
    return names


def _inspect_stores(store_dir: Path, dataset: str, models: Sequence[str],
                    methods: Sequence[str]) -> dict[str, tuple[Path, str]]:
    """Check every store of a dataset and return model -> (path, identity).

    Refuses incomplete or missing stores (via the store reader), stores of one dataset whose
    rows or splits differ between models, and a missing validation split when a method needs it.
    """
    from embedcyto.store import load_features, store_path

    out, signatures = {}, {}
    for model in models:
        path = store_path(store_dir, dataset, model)
        feats = load_features(path, dataset, model, mmap=True)
        out[model] = (path, store_identity(feats.provenance))
        signatures[model] = _row_signature(feats)
        needing = [m for m in methods if m in ("linear", "knn")]
        if needing and not np.any(np.asarray(feats.splits) == "val"):
            raise ProbeError(
                f"{path} has no validation rows, which {', '.join(needing)} need to choose their "
                "hyper-parameter: re-split the dataset with a validation share and extract again, "
                "or probe with --methods simpleshot")
    if len(set(signatures.values())) > 1:
        groups: dict[str, list[str]] = {}
        for model, sig in signatures.items():
            groups.setdefault(sig, []).append(model)
        listing = " vs ".join("[" + ", ".join(g) + "]" for g in groups.values())
        raise ProbeError(
            f"stores of dataset {dataset!r} hold different images or splits ({listing}), so "
            "models would not be compared on the same rows: extract them all from the same "
            "dataset root and split file")
    return out


def _frozen(value: Any) -> Any:
    """Lists (e.g. a C grid) become tuples so that tasks stay hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def plan_tasks(dataset: str, model: str, methods: Sequence[str], shots: Sequence[int],
               seeds: Sequence[int], options: Mapping[str, Mapping[str, Any]]) -> list[ProbeTask]:
    """Every task of one (dataset, model), in sorted order."""
    tasks = []
    for method in methods:
        if method not in METHODS:
            raise ProbeError(f"unknown probe method {method!r}; choose from {', '.join(METHODS)}")
        opts = tuple(sorted((k, _frozen(v)) for k, v in dict(options.get(method, {})).items()))
        for k in (shots if method in EPISODE_METHODS else (None,)):
            tasks.extend(ProbeTask(dataset, model, method, k, s, opts) for s in seeds)
    return sorted(tasks, key=ProbeTask.sort_key)


def read_results(path: Path) -> list[dict]:
    """Rows of a results file (empty list when it does not exist)."""
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ProbeError(f"{path} line {number} is not JSON ({err}); delete that line or the "
                             "file and run again") from err
    return rows


def _write_results(path: Path, rows: Iterable[dict]) -> None:
    """Replace a results file atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def _run_unit(path: Path, method: str, runs, episodes: int, options: Mapping[str, Any]):
    """Worker body: load one store and evaluate one method (runs in a joblib worker)."""
    from embedcyto.store import load_features

    return evaluate_unit(load_features(path), method, runs, episodes, options)


def _units(tasks: Sequence[ProbeTask], stores, done: set[str], rerun: bool):
    """Group the tasks still to compute into (dataset, model, method) units.

    Deterministic methods are computed once per unit and copied to every seed's row.
    """
    units: dict[tuple, dict] = {}
    for task in tasks:
        path, ident = stores[(task.dataset, task.model)]
        if not rerun and row_key({**task.key(), "store_identity": ident}) in done:
            continue
        unit = units.setdefault((task.dataset, task.model, task.method, task.options),
                                {"path": path, "identity": ident, "runs": [], "tasks": []})
        run = (task.shots, None if task.method in DETERMINISTIC else task.seed)
        if run not in unit["runs"]:
            unit["runs"].append(run)
        unit["tasks"].append(task)
    return list(units.values())


def _rows_of(unit: dict, results: list[dict]) -> list[dict]:
    from embedcyto import __version__

    by_run = dict(zip(unit["runs"], results))
    rows = []
    for task in unit["tasks"]:
        deterministic = task.method in DETERMINISTIC
        result = by_run[(task.shots, None if deterministic else task.seed)]
        rows.append({**task.key(), "store_identity": unit["identity"],
                     "store_path": str(unit["path"]), "deterministic": deterministic,
                     "embedcyto_version": __version__, **result})
    return rows


def run_probe_grid(store_dir=None, datasets: Sequence[str] | None = None,
                   models: Sequence[str] | None = None, methods: Sequence[str] = DEFAULT_METHODS,
                   shots: Sequence[int] = DEFAULT_SHOTS, seeds: Sequence[int] = DEFAULT_SEEDS,
                   episodes: int = 600, n_jobs: int | None = None, results_dir=None,
                   rerun: bool = False, options: Mapping[str, Mapping[str, Any]] | None = None,
                   backend: str | None = None, scheduler: str | None = None) -> list[dict]:
    """Probe every requested store; write and return one row per task (sorted).

    Args:
        store_dir: folder of stores (``--store``; default ``EMBEDCYTO_STORE`` or ``./cache``).
        datasets: dataset names; None = every dataset with a complete store.
        models: model names; None = every model with a complete store of the dataset.
        methods: any of "linear", "knn", "study_head", "simpleshot", "protonet".
        shots, episodes: few-shot grid (episode methods only).
        seeds: one row per seed and task.
        n_jobs: joblib workers (-1: all cores; None: 1 locally, every worker on a cluster);
            results do not depend on it.
        results_dir: where ``<dataset>.jsonl`` files go (default ``results/probe``).
        rerun: recompute rows that already exist for the same task and store.
        options: per-method estimator keyword arguments, e.g. ``{"knn": {"weighting": "distance"}}``.
        backend: joblib backend: "loky" (default), "threading", "dask" or "ray" (see
            :mod:`embedcyto.parallel`); results do not depend on it.
        scheduler: Dask or Ray cluster address; None starts a local cluster.

    Raises:
        ProbeError: missing/incomplete stores, stores disagreeing on rows or splits, a missing
            validation split, unknown methods, bad options, too few images for the shots.
    """
    from joblib import Parallel, delayed

    from embedcyto.parallel import check_backend, joblib_backend
    from embedcyto.store import default_store_dir

    check_backend(backend, scheduler)
    store_dir = default_store_dir(store_dir)
    results_dir = Path(results_dir) if results_dir is not None else DEFAULT_RESULTS_DIR
    if int(episodes) < 1 or not seeds:
        raise ProbeError("need at least one episode and one seed")
    tasks, stores = [], {}
    for dataset in datasets or _datasets_in(store_dir):
        names = _models_for(store_dir, dataset, models)
        try:
            inspected = _inspect_stores(store_dir, dataset, names, methods)
        except StoreError as err:
            raise ProbeError(str(err)) from err
        for model, info in inspected.items():
            stores[(dataset, model)] = info
            tasks += plan_tasks(dataset, model, methods, shots, seeds, options or {})
    existing = {d: read_results(results_dir / f"{d}.jsonl") for d in {t.dataset for t in tasks}}
    done = {row_key(r) for rows in existing.values() for r in rows}
    units = _units(tasks, stores, done, rerun)
    jobs = (delayed(_run_unit)(u["path"], u["tasks"][0].method, u["runs"], episodes,
                               dict(u["tasks"][0].options)) for u in units)
    with contextlib.ExitStack() as stack:
        if units:  # no cluster is started when every row is already there
            n_jobs = stack.enter_context(joblib_backend(backend, scheduler=scheduler,
                                                        n_jobs=n_jobs))
        for unit, results in zip(units, Parallel(n_jobs=n_jobs, return_as="generator")(jobs)):
            dataset = unit["tasks"][0].dataset
            rows = keep_row_predictions(results_dir, _rows_of(unit, results))
            new = json.loads(json.dumps(rows))  # as read back from disk
            fresh = {_task_key(r) for r in new}  # replaces rows of older stores too
            existing[dataset] = [r for r in existing[dataset] if _task_key(r) not in fresh] + new
            _write_results(results_dir / f"{dataset}.jsonl", existing[dataset])
    wanted = {row_key({**t.key(), "store_identity": stores[(t.dataset, t.model)][1]}): t
              for t in tasks}
    rows = [r for rows in existing.values() for r in rows if row_key(r) in wanted]
    return sorted(rows, key=lambda r: wanted[row_key(r)].sort_key())
