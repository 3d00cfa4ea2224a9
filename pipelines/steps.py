"""The stages a recipe chains, each a thin loop over library calls.

Every stage is resumable because the library is: a finished store is a cache hit, probe rows
already in the results file are reused, a finished LoRA run is skipped. So a recipe that stopped
half-way (or is run again with one more model) only computes what is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pipelines.common import Settings, precision_for, say, workspace_of


def store_states(settings: Settings, datasets: Iterable[str],
                 models: Iterable[str]) -> dict[tuple[str, str], str]:
    """(dataset, model) → "done" for a complete store, else what is there ("to extract")."""
    from embedcyto.store import list_stores

    found = {(s.dataset, s.model): s for s in list_stores(settings.store)} \
        if settings.store.is_dir() else {}
    states = {}
    for d in datasets:
        for m in models:
            info = found.get((d, m))
            if info is None:
                states[(d, m)] = "to extract"
            else:
                states[(d, m)] = "done" if info.state == "complete" else \
                    f"to extract (found {info.status})"
    return states


def lora_plans(name: str, settings: Settings, models: Sequence[str], *,
               shots: Sequence[int] = (), fractions: Sequence[float] = (),
               seeds: Sequence[int] | None = None, overrides: dict | None = None,
               smoke_key: str = "lora") -> list:
    """The recipe's LoRA grid as workspace plans (``[lora.NAME]``), one per precision the
    models run in (:func:`precision_for`), so the saved workspace names exactly these runs."""
    from embedcyto.workspace import LoraPlan

    extra = dict(overrides or {})
    extra = {**extra.pop("settings", {}), **extra}
    if settings.smoke:
        extra = {**extra, **settings.config["smoke"].get(smoke_key, {})}
    groups: dict[str, list[str]] = {}
    for model in models:
        groups.setdefault(precision_for(settings, model), []).append(model)
    shots = tuple(k for k in shots if k is not None)
    if not shots and not fractions:
        return []
    return [LoraPlan(name=name if len(groups) == 1 else f"{name}-{precision}",
                     models=tuple(group), datasets=tuple(settings.datasets), shots=shots,
                     fractions=tuple(fractions),
                     seeds=tuple(seeds or settings.seeds),
                     settings=tuple({**extra, "precision": precision}.items()))
            for precision, group in groups.items()]


def lora_configs(settings: Settings, datasets: Sequence[str], models: Sequence[str], *,
                 shots: Sequence[int | None] = (), fractions: Sequence[float] = (),
                 seeds: Sequence[int] | None = None, overrides: dict | None = None,
                 smoke_key: str = "lora") -> list:
    """Every LoRA run of a grid, as library configs (shots, or fractions, × seeds).

    ``overrides`` are the experiment's settings; a smoke run lays the configuration's
    ``smoke[smoke_key]`` settings (short runs) over them.
    """
    from embedcyto.lora.config import LoraRunConfig

    extra = dict(overrides or {})
    if settings.smoke:
        extra = {**extra, **settings.config["smoke"].get(smoke_key, {})}
    amounts = [{"shots": k} for k in shots] + [{"fraction": f} for f in fractions]
    return [LoraRunConfig(model=m, dataset=d, seed=s, device=settings.device,
                          precision=precision_for(settings, m), **a, **extra)
            for d in datasets for m in models for a in amounts
            for s in (seeds or settings.seeds)]


def lora_done(settings: Settings, config) -> bool:
    """Whether a finished run folder exists for ``config``."""
    from embedcyto.lora.runs import is_complete, run_dir

    return is_complete(run_dir(settings.runs, config))


def print_plan(settings: Settings, stores: dict, probes: list[str], loras: list) -> None:
    """What the recipe will do and what is already done, before doing anything."""
    say(f"== {settings.name}{' (smoke: generated data, random weights)' if settings.smoke else ''}")
    say(f"   data {settings.data_root}  store {settings.store}  results {settings.results}  "
        f"runs {settings.runs}  report {settings.report}")
    todo = [k for k, v in stores.items() if v != "done"]
    say(f"extract: {len(stores)} stores, {len(stores) - len(todo)} done, {len(todo)} to run")
    for (d, m) in todo:
        say(f"   {d}/{m}: {stores[(d, m)]}")
    for line in probes:
        say(f"probe: {line}")
    if loras:
        done = sum(lora_done(settings, c) for c in loras)
        say(f"lora: {len(loras)} runs, {done} done, {len(loras) - done} to run")
    say()


def open_datasets(settings: Settings, datasets: Sequence[str]) -> dict:
    """Open every dataset (splits saved beside the stores) before any extraction.

    Raises:
        EmbedcytoError: listing every dataset that could not be read.
    """
    from embedcyto.workspace.run import open_all

    ws = workspace_of(settings)
    opened = open_all([ws.dataset(name) for name in datasets], ws, settings.store)
    for name, (dataset, _) in opened.items():
        if dataset.skipped:
            say(f"{name}: {len(dataset.skipped)} unreadable image(s) left out")
    return opened


def extract_all(settings: Settings, opened: dict, models: Sequence[str]) -> None:
    """Extract each (dataset, model) store, as `embedcyto extract` does; finished stores are
    cache hits."""
    from embedcyto.backbones import get_card
    from embedcyto.extract import ExtractConfig
    from embedcyto.workspace.run import extract_stores

    def echo(line) -> None:
        state = "cache hit" if line.cached else f"{line.computed} rows in {line.seconds:.1f} s"
        say(f"extract {line.dataset}/{line.model}: {state}")

    for model in models:  # one precision per model (precision_for)
        config = ExtractConfig(device=settings.device, progress=not settings.smoke,
                               num_workers=0 if settings.smoke else None,
                               precision=precision_for(settings, model))
        extract_stores(opened, [get_card(model)], store_dir=settings.store, config=config,
                       weights_dir=settings.weights_dir, on_line=echo)


def probe_all(settings: Settings, datasets: Sequence[str], models: Sequence[str],
              methods: Sequence[str], shots: Sequence[int]) -> None:
    """The probe grid of each dataset; rows already in the results are reused."""
    from embedcyto.probes.runner import ProbeGridConfig, run_probe_grid

    for name in datasets:
        rows = run_probe_grid(ProbeGridConfig(
            settings.store, (name,), tuple(models), tuple(methods), tuple(shots) or (1,),
            tuple(settings.seeds), settings.episodes, settings.n_jobs, settings.probe_results,
            options=settings.probe_options or {}))
        say(f"probe {name}: {len(rows)} rows ({', '.join(methods)})")
        rows.raise_for_skipped()


def lora_all(settings: Settings, opened: dict, configs: Sequence) -> None:
    """Train every LoRA run, as `embedcyto lora` does; finished identical runs are skipped."""
    from embedcyto.lora.runs import is_complete, run_dir
    from embedcyto.workspace.lora_plan import PlannedRun
    from embedcyto.workspace.run import train_runs

    def echo(result) -> None:
        config = result.config
        accuracy = result.metrics.get("test", {}).get("accuracy")
        state = "done before" if result.skipped else f"{result.seconds:.1f} s"
        shown = "?" if accuracy is None else f"{100 * accuracy:.1f} %"
        say(f"lora {config.dataset}/{config.model}/{config.mode}/seed-{config.seed}: "
            f"test accuracy {shown} ({state})")

    runs = [PlannedRun(settings.name, c, run_dir(settings.runs, c),
                       is_complete(run_dir(settings.runs, c))) for c in configs]
    train_runs(runs, opened, runs_dir=settings.runs, weights_dir=settings.weights_dir,
               progress=not settings.smoke, on_result=echo)


def write_report(settings: Settings, plans: Sequence = ()) -> None:
    """Tables and figures of everything found in the results and runs folders; the recipe's
    workspace (its datasets, models, folders and LoRA plans) saved beside them."""
    from embedcyto.report import build_report
    from embedcyto.workspace import WORKSPACE_FILE, save_workspace

    result = build_report(settings.probe_results, settings.runs, settings.report)
    save_workspace(workspace_of(settings, plans), settings.report / WORKSPACE_FILE)
    say(f"report: {result.markdown} ({len(result.tables)} tables, {len(result.figures)} "
        "figures)")
    say(f"workspace: {settings.report / WORKSPACE_FILE} (carry on from the command line: "
        f"EMBEDCYTO_WORKSPACE={settings.report / WORKSPACE_FILE} embedcyto status)")
    if settings.smoke:
        say("smoke run: generated data and random weights, the numbers mean nothing")
