"""The stages a recipe chains, each a thin loop over library calls.

Every stage is resumable because the library is: a finished store is a cache hit, probe rows
already in the results file are reused, a finished LoRA run is skipped. So a recipe that stopped
half-way (or is run again with one more model) only computes what is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pipelines.common import Settings, say, workspace_of


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


def lora_plan(name: str, settings: Settings, models: Sequence[str], *,
              shots: Sequence[int] = (), fractions: Sequence[float] = (),
              seeds: Sequence[int] | None = None, overrides: dict | None = None):
    """A grid of LoRA runs as a workspace plan (``[lora.NAME]``): the data a recipe runs."""
    from embedcyto.workspace import LoraPlan

    extra = dict(overrides or {})
    extra = {**extra.pop("settings", {}), **extra}
    if settings.smoke:
        extra = {**extra, **settings.config["smoke"].get("lora", {})}
    return LoraPlan(name=name, models=tuple(models), datasets=tuple(settings.datasets),
                    shots=tuple(k for k in shots if k is not None),
                    fractions=tuple(int(f) for f in fractions), seeds=tuple(seeds or settings.seeds),
                    settings=tuple(extra.items()))


def lora_configs(settings: Settings, datasets: Sequence[str], models: Sequence[str], *,
                 shots: Sequence[int | None] = (), fractions: Sequence[float] = (),
                 seeds: Sequence[int] | None = None, overrides: dict | None = None) -> list:
    """Every LoRA run of a grid, as library configs (shots, or fractions, × seeds).

    Shots and fractions go through a workspace plan, as ``embedcyto lora`` runs them; a
    ``None`` shot (the recipe's "all": the whole training split) has no plan form and is added
    with the plan's settings.
    """
    from dataclasses import replace

    from embedcyto.workspace.lora_plan import plan_configs

    plan = lora_plan("recipe", settings, models, shots=shots, fractions=fractions, seeds=seeds,
                     overrides=overrides) if [k for k in shots if k is not None] or fractions \
        else None
    configs = plan_configs(plan, datasets, device=settings.device) if plan else []
    if None in shots:
        template = plan_configs(lora_plan("all", settings, models, shots=(1,), seeds=seeds,
                                          overrides=overrides), datasets,
                                device=settings.device)
        configs += [replace(c, shots=None) for c in template]
    return configs


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

    config = ExtractConfig(device=settings.device, progress=not settings.smoke,
                           num_workers=0 if settings.smoke else None)

    def echo(line) -> None:
        state = "cache hit" if line.cached else f"{line.computed} rows in {line.seconds:.1f} s"
        say(f"extract {line.dataset}/{line.model}: {state}")

    extract_stores(opened, [get_card(m) for m in models], store_dir=settings.store,
                   config=config, weights_dir=settings.weights_dir, on_line=echo)


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
        f"embedcyto --workspace {settings.report / WORKSPACE_FILE} status)")
    if settings.smoke:
        say("smoke run: generated data and random weights, the numbers mean nothing")
