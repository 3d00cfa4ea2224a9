"""The probe grid: every (dataset × model × method × shots × seed) on cached features.

One JSON line per task goes to ``<results_dir>/<dataset>.jsonl`` (default ``results/probe``).
A row is keyed by its task and by the identity of the store it was computed from (a hash of the
store's full provenance, creation time included), so re-running the same grid only computes
what is missing, and a re-extracted store is probed again. ``rerun=True`` recomputes everything.

Work is split into units of (dataset, model, method), each loading its store once, and fanned
out with ``joblib.Parallel(n_jobs)``; results come back in task order and every task seeds its
own generators, so the rows do not depend on ``n_jobs`` or on the joblib backend (a Dask or Ray
cluster through ``joblib.parallel_config``).

Methods are rows of :mod:`embedcyto.probes.registry`. Deterministic methods ("linear" with
L-BFGS, "knn" with a validation split) have no randomness, so they are computed once and
written once per seed with ``"deterministic": true`` — the mean ± std over seeds is then an
honest ± 0. Episode methods and "study_head" depend on the seed.

Every option and every (dataset, shots) combination is checked before any probe runs
(:mod:`embedcyto.probes.checks`). Each unit's rows carry the identity of the store its worker
actually read (from the same open that read the features), and are merged into the results file
under a lock as soon as the unit finishes (:mod:`embedcyto.probes.results`), so concurrent runs
and interrupted runs lose nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedcyto.errors import ProbeError, StoreError
from embedcyto.predictions import keep_row_predictions
from embedcyto.probes import registry
from embedcyto.probes.checks import (SkippedStore, StoreCheck, inspect_stores, store_identity,
                                     usable_shots)
from embedcyto.probes.results import (merge_rows, read_results, results_file, row_key,
                                      task_key)

log = logging.getLogger(__name__)

DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)
DEFAULT_EPISODES = 600


def _names(value) -> tuple[str, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class ProbeGridConfig:
    """What to probe and how; validated when built, so a bad request fails before any work.

    Attributes:
        store_dir: folder of stores (default ``$EMBEDCYTO_STORE`` or ``./cache``).
        datasets: dataset names; None = every dataset with a complete store.
        models: model names; None = every model with a complete store of the dataset.
        methods: registry names (:func:`embedcyto.probes.registry.method_names`).
        shots: few-shot grid (episodic methods). None = :data:`DEFAULT_SHOTS`, trimmed per
            dataset to what its smallest class allows; an explicit grid is trimmed the same way,
            but a value that no dataset supports is an error.
        seeds: one row per seed and task.
        episodes: few-shot episodes per (shots, seed).
        n_jobs: joblib workers (-1: all cores; None: 1 locally, every worker on a cluster);
            results do not depend on it.
        results_dir: where ``<dataset>.jsonl`` files go (default ``results/probe``).
        rerun: recompute rows that already exist for the same task and store.
        options: per-method estimator options, e.g. ``{"knn": {"weighting": "distance"}}`` or
            ``{"simpleshot": {"centre": "train"}}``.
        backend: joblib backend: "loky" (default), "threading", "dask" or "ray" (see
            :mod:`embedcyto.parallel`); results do not depend on it.
        scheduler: Dask or Ray cluster address; None starts a local cluster.
        prompts: JSON file of class phrases and templates for the text methods, or a mapping
            dataset name -> file (a workspace's per-dataset prompts); default: the prompts
            shipped for the dataset, see docs/text.md.
        weights_dir: where text towers' weights and tokenizers are looked for (default:
            ``EMBEDCYTO_WEIGHTS``); the store's own weights file is tried first.
    """

    store_dir: str | Path | None = None
    datasets: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    methods: tuple[str, ...] = field(default_factory=registry.default_methods)
    shots: tuple[int, ...] | None = None
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    episodes: int = DEFAULT_EPISODES
    n_jobs: int | None = None
    results_dir: str | Path | None = None
    rerun: bool = False
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    backend: str | None = None
    scheduler: str | None = None
    prompts: str | Path | Mapping[str, str | Path] | None = None
    weights_dir: str | Path | None = None

    def __post_init__(self) -> None:
        for name in ("datasets", "models", "methods"):
            object.__setattr__(self, name, _names(getattr(self, name)))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if self.shots is not None:
            object.__setattr__(self, "shots", tuple(int(k) for k in self.shots))
        object.__setattr__(self, "options", {m: dict(o) for m, o in (self.options or {}).items()})
        self._validate()

    def _validate(self) -> None:
        if not self.methods:
            raise ProbeError("give at least one probe method")
        specs = [registry.get_method(m) for m in self.methods]
        for name, opts in self.options.items():
            registry.get_method(name).resolve_options(opts)
        if self.shots is not None and (not self.shots or min(self.shots) < 1):
            raise ProbeError(f"shots must be at least 1, got {list(self.shots)}")
        if not self.seeds or min(self.seeds) < 0:
            raise ProbeError(f"give at least one seed, each 0 or more; got {list(self.seeds)}")
        if int(self.episodes) < 1 and any(s.episodic for s in specs):
            raise ProbeError(f"episodes must be at least 1, got {self.episodes}")

    def prompts_for(self, dataset: str) -> str | Path | None:
        """The prompts file of one dataset's text methods (None: the shipped prompts)."""
        if isinstance(self.prompts, Mapping):
            return self.prompts.get(dataset)
        return self.prompts

    @property
    def shot_grid(self) -> tuple[int, ...]:
        return DEFAULT_SHOTS if self.shots is None else self.shots

    @property
    def results_folder(self) -> Path:
        from embedcyto.folders import output_folder

        return output_folder("results", self.results_dir)


@dataclass(frozen=True)
class ProbeTask:
    """One row of results: which features, which method, how many shots, which seed.

    ``shots`` is None for full-data probes; ``options`` are the estimator's keyword arguments
    (the method's recorded defaults included) as sorted (name, value) pairs so the task stays
    hashable.
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
        names = registry.method_names()
        order = names.index(self.method) if self.method in names else len(names)
        return (self.dataset, self.model, order, self.shots or 0,
                self.seed if self.seed is not None else -1)


class GridRows(list):
    """The grid's rows (a plain list of dicts), plus the stores it left out as damaged.

    ``skipped`` is empty when every store was probed; the CLI exits non-zero otherwise.
    """

    skipped: tuple[SkippedStore, ...] = ()

    def raise_for_skipped(self) -> None:
        """Raise :class:`ProbeError` listing every skipped store with its fix, if any was.

        Called once the other stores' rows are written, so a caller that must not take a
        partial grid for a full one (the CLI, the pipelines) fails without losing them.
        """
        if self.skipped:
            listing = "".join(f"\n  {s.dataset}/{s.model}: {s.problem}" for s in self.skipped)
            raise ProbeError(f"skipped {len(self.skipped)} damaged store(s); the rows written "
                             f"are those of the other stores:{listing}")


def _models_for(store_dir: Path, dataset: str,
                models: Sequence[str] | None) -> tuple[list[str], list[SkippedStore]]:
    """The models to probe for a dataset, and its stores the quick check found damaged."""
    from embedcyto.store import list_stores

    entries = [s for s in list_stores(store_dir) if s.dataset == dataset]
    if models:
        return list(models), []
    complete = sorted({s.model for s in entries if s.state == "complete"})
    damaged = [SkippedStore(dataset, s.model, Path(s.path), s.status) for s in entries
               if s.state == "damaged"]
    others = [f"{s.model} ({s.status})" for s in entries if s.state not in ("complete",
                                                                            "damaged")]
    if others:
        log.warning("%s: skipping stores that are not complete: %s", dataset, ", ".join(others))
    for skip in damaged:
        log.warning("skipping a damaged store %s: %s", skip.path, skip.problem)
    if not complete and not damaged:
        raise ProbeError(f"no complete feature store for dataset {dataset!r} in {store_dir}; "
                         f"run `embedcyto extract` with `dataset={dataset}` and `model=NAME` "
                         "first")
    return complete, damaged


def _datasets_in(store_dir: Path) -> list[str]:
    from embedcyto.store import list_stores

    names = sorted({s.dataset for s in list_stores(store_dir)
                    if s.state in ("complete", "damaged")})
    if not names:
        raise ProbeError(f"no complete feature store in {store_dir}; run `embedcyto extract` "
                         "first, or give the folder holding the stores (`store_dir=`)")
    return names


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
        spec = registry.get_method(method)
        resolved = spec.resolve_options(options.get(method))
        opts = tuple(sorted((k, _frozen(v)) for k, v in resolved.items()))
        for k in (shots if spec.episodic else (None,)):
            tasks.extend(ProbeTask(dataset, model, method, k, s, opts) for s in seeds)
    return sorted(tasks, key=ProbeTask.sort_key)


def _run_unit(path: Path, method: str, runs, episodes: int, options: Mapping[str, Any]):
    """Worker body: load one store, evaluate one method; return (store stamp, rows).

    The stamp (the store's identity and whether its images were generated) comes from the same
    open that read the features, so a row is bound to the data it was computed on even if the
    store is rebuilt while the grid runs.
    """
    from embedcyto.probes.evaluate import evaluate_unit
    from embedcyto.store import load_features
    from embedcyto.store.provenance import GENERATED_DATA, is_generated_data

    features = load_features(path)
    stamp = {"store_identity": store_identity(features.provenance),
             GENERATED_DATA: is_generated_data(features.provenance)}
    return stamp, evaluate_unit(features, method, runs, episodes, options)


def _deterministic(method: str) -> bool:
    return registry.get_method(method).deterministic


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
        run = (task.shots, None if _deterministic(task.method) else task.seed)
        if run not in unit["runs"]:
            unit["runs"].append(run)
        unit["tasks"].append(task)
    return list(units.values())


def _rows_of(unit: dict, stamp: dict, results: list[dict]) -> list[dict]:
    from embedcyto import __version__

    if stamp["store_identity"] != unit["identity"]:
        log.warning("%s changed while probing (re-extracted?): its rows are recorded with the "
                    "identity of the store that was actually read", unit["path"])
    by_run = dict(zip(unit["runs"], results))
    rows = []
    for task in unit["tasks"]:
        deterministic = _deterministic(task.method)
        result = by_run[(task.shots, None if deterministic else task.seed)]
        rows.append({**task.key(), **stamp,
                     "store_path": str(unit["path"]), "deterministic": deterministic,
                     "embedcyto_version": __version__, **result})
    return rows


def _largest_first(units: list[dict], sizes: Mapping[str, int]) -> list[dict]:
    """Units of the largest datasets (training rows) first, the grid's order kept otherwise.

    On a few cores the workers take units in this order; starting the long ones first keeps
    a big dataset's slowest method from starting last while the other workers sit idle (each
    unit's rows are written as it finishes, and the returned rows are sorted, so the order
    changes nothing else)."""
    return sorted(units, key=lambda u: -sizes.get(u["tasks"][0].dataset, 0))


def _plan(config: ProbeGridConfig, store_dir: Path
          ) -> tuple[list[ProbeTask], dict, tuple[SkippedStore, ...], dict[str, int]]:
    """Check every store and shot value, then list every task (nothing is computed yet).

    Damaged stores are left out and returned; when nothing else is left, that is an error.
    Also returned: each dataset's number of training rows.
    """
    checks: list[StoreCheck] = []
    skipped: list[SkippedStore] = []
    for dataset in config.datasets or _datasets_in(store_dir):
        names, damaged = _models_for(store_dir, dataset, config.models)
        skipped += damaged
        try:
            check = inspect_stores(store_dir, dataset, names, config.methods)
        except StoreError as err:
            raise ProbeError(str(err)) from err
        skipped += check.damaged
        checks.append(check)
    if not any(c.stores for c in checks):
        raise ProbeError("nothing to probe: " + "; ".join(s.problem for s in skipped))
    shots = usable_shots(checks, config.shot_grid, config.methods, config.shots is not None)
    tasks, stores = [], {}
    for check in checks:
        for model, info in check.stores.items():
            stores[(check.dataset, model)] = info
            methods, options = prepare_text_methods(info[0], model, config, check.dataset)
            tasks += plan_tasks(check.dataset, model, methods, shots[check.dataset],
                                config.seeds, options)
    return tasks, stores, tuple(skipped), {c.dataset: sum(c.train_counts) for c in checks}


def prepare_text_methods(path: Path, model: str, config: ProbeGridConfig,
                         dataset: str | None = None):
    """The methods to run on one store and their options: text methods are dropped (with a
    warning) for a model without a text encoder; otherwise the store's class text embeddings
    are computed or reused now, in this process, and their prompts' digest is added to the
    methods' options so that changed prompts make earlier rows stale."""
    text = [m for m in config.methods if registry.get_method(m).text]
    if not text:
        return config.methods, config.options
    from embedcyto.textembed import has_text_tower

    if not has_text_tower(model):
        log.warning("%s has no text encoder: %s skipped for it", model, ", ".join(text))
        return tuple(m for m in config.methods if m not in text), config.options
    from embedcyto.probes.text_inputs import PROMPTS_OPTION
    from embedcyto.store import load_features
    from embedcyto.textembed import ensure_text_embeddings

    entry = ensure_text_embeddings(load_features(path), prompts_file=config.prompts_for(dataset),
                                   weights_dir=config.weights_dir)["classes"]
    options = {m: dict(o) for m, o in config.options.items()}
    for method in text:
        options[method] = {**options.get(method, {}), PROMPTS_OPTION: entry.prompts_sha256}
    return config.methods, options


def run_probe_grid(config: ProbeGridConfig) -> GridRows:
    """Probe every requested store; write and return one row per task (sorted).

    Rows already in the results folder for the same task and store are reused (unless
    ``config.rerun``); each finished unit's rows are merged into ``<dataset>.jsonl`` at once.
    A store found damaged is left out and listed in the result's ``skipped`` (with its fix);
    the other stores are probed.

    Raises:
        ProbeError: missing/incomplete stores, stores disagreeing on rows or splits, a missing
            validation split, non-finite features, unknown methods, bad options, shots no
            dataset can support — all before any probe runs.
    """
    from joblib import Parallel, delayed

    from embedcyto.parallel import check_backend, joblib_backend
    from embedcyto.store import default_store_dir

    check_backend(config.backend, config.scheduler)
    store_dir = default_store_dir(config.store_dir)
    tasks, stores, skipped, sizes = _plan(config, store_dir)
    folder = config.results_folder
    existing = {d: read_results(results_file(folder, d)) for d in {t.dataset for t in tasks}}
    done = {row_key(r): r for rows in existing.values() for r in rows}
    units = _largest_first(_units(tasks, stores, set(done), config.rerun), sizes)
    jobs = (delayed(_run_unit)(u["path"], u["tasks"][0].method, u["runs"], config.episodes,
                               dict(u["tasks"][0].options)) for u in units)
    computed: dict[str, dict] = {}
    n_jobs = config.n_jobs
    with contextlib.ExitStack() as stack:
        if units:  # no cluster is started when every row is already there
            n_jobs = stack.enter_context(joblib_backend(config.backend, n_jobs=n_jobs,
                                                        scheduler=config.scheduler))
        for unit, (stamp, results) in zip(units, Parallel(n_jobs=n_jobs,
                                                          return_as="generator")(jobs)):
            new = keep_row_predictions(folder, _rows_of(unit, stamp, results))
            merged = merge_rows(results_file(folder, unit["tasks"][0].dataset), new)
            keys = {row_key(r) for r in new}
            computed.update((task_key(r), r) for r in merged if row_key(r) in keys)
    rows = GridRows(_collect(tasks, stores, done, computed))
    rows.skipped = skipped
    return rows


def _collect(tasks: Sequence[ProbeTask], stores, done: Mapping[str, dict],
             computed: Mapping[str, dict]) -> list[dict]:
    """The row of every task, in task order: computed now, or reused from the results file."""
    out = []
    for task in sorted(tasks, key=ProbeTask.sort_key):
        row = computed.get(task_key(task.key()))
        if row is None:
            ident = stores[(task.dataset, task.model)][1]
            row = done.get(row_key({**task.key(), "store_identity": ident}))
        if row is not None:
            out.append(row)
    return out
