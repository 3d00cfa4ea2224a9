"""``embedcyto probe``: linear, kNN and few-shot probes on cached features."""

from __future__ import annotations

import click

from embedcyto.cli._common import comma_list, results_option, store_option
from embedcyto.probes import registry


def _methods(ctx, param, value: str) -> tuple[str, ...]:
    names = registry.method_names()
    out = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [m for m in out if m not in names]
    if unknown or not out:
        raise click.BadParameter(f"unknown method(s) {unknown}; choose from {', '.join(names)}")
    return out


def _methods_help() -> str:
    listing = "; ".join(f"{m.name}: {m.help}" for m in registry.probe_methods())
    return f"Comma-separated probe methods ({listing})."


def _cells(rows: list[dict]) -> list[tuple[tuple, dict]]:
    """Rows grouped over seeds by :mod:`embedcyto.report.aggregate`: one entry per
    (dataset, model, method, shots) with a cell per headline metric and per level."""
    from embedcyto.report import aggregate as agg
    from embedcyto.report.records import probe_record

    records = [probe_record(r) for r in rows]
    out = []
    for key, members in agg.group_seeds(records).items():
        cells = {m: agg.make_cell((r["seed"], r[m]) for r in members)
                 for m in registry.HEADLINE_METRICS}
        for level in {name for r in members for name in (r["levels"] or {})}:
            values = [(r["seed"], r["levels"][level]) for r in members
                      if (r["levels"] or {}).get(level) is not None]
            cells[level] = agg.make_cell(values)
        out.append((key[:4], cells))
    return out


def _fmt(cell, ci: float | None) -> str:
    if cell is None:
        return ""
    spread = ci if cell.std is None and ci is not None else (cell.std or 0.0)
    return f"{100 * cell.mean:.1f}±{100 * spread:.1f}"


def format_table(rows: list[dict]) -> str:
    """Accuracy, balanced accuracy, macro-F1 (and per-level accuracy where a dataset has levels)
    in percent: mean ± std over seeds, or ± the CI over episodes when there is one seed.

    Columns are as wide as their longest entry, so long model names keep the table aligned.
    """
    ci = {(r["dataset"], r["model"], r["method"], r["shots"]): (r.get("ci") or {}) for r in rows}
    grouped = _cells(rows)
    levels = sorted({name for _, cells in grouped for name in cells
                     if name not in registry.HEADLINE_METRICS}, key=lambda n: (n == "average", n))
    header = ["dataset", "model", "method", "shots",
              *registry.HEADLINE_METRICS.values(), *levels]
    lines = [header]
    for key, cells in grouped:
        dataset, model, method, shots = key
        spread = ci[key]
        lines.append([dataset, model, method, str(shots) if shots else "all",
                      *(_fmt(cells[m], spread.get(m)) for m in registry.HEADLINE_METRICS),
                      *(_fmt(cells.get(lv), None) for lv in levels)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                  for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
        for line in lines)


def _existing_keys(folder) -> set[str]:
    """Keys of the rows already in the results folder (to say what this run computed)."""
    from pathlib import Path

    from embedcyto.probes.results import read_results, row_key

    return {row_key(r) for path in sorted(Path(folder).glob("*.jsonl"))
            for r in read_results(path)}


@click.command("probe")
@click.option("--dataset", "datasets", multiple=True,
              help="Dataset name (repeat; default: the workspace's datasets with a store, else "
                   "every dataset of the store folder).")
@click.option("--model", "models", multiple=True, help="Model name (repeat; default: all).")
@store_option
@click.option("--episodes", default=600, show_default=True, type=click.IntRange(min=1),
              help="Few-shot episodes per (shots, seed).")
@click.option("--shots", default=None, callback=comma_list(int, minimum=1), metavar="K[,K...]",
              help="Images per class of the few-shot episodes, e.g. 1,2,4 (default: 1,2,4,8,16; "
                   "a value a dataset's smallest class cannot supply is skipped for that "
                   "dataset with a warning).")
@click.option("--seeds", "--seed", "seeds", default="1,2,3", show_default=True,
              callback=comma_list(int, minimum=0), metavar="S[,S...]",
              help="Seeds, one result row per seed (support sets, the study head, holdouts).")
@click.option("--methods", default=",".join(registry.default_methods()), show_default=True,
              callback=_methods, help=_methods_help())
@click.option("--centre", type=click.Choice(registry.CENTRES), default=None,
              help="SimpleShot centring: each episode's support mean (default) or the mean of "
                   "the whole training split; recorded in every row.")
@click.option("--n-jobs", default=None, type=int,
              help="joblib workers (default: 1 locally, every worker with dask or ray).")
@click.option("--backend", type=click.Choice(["loky", "threading", "dask", "ray"]),
              default=None, help="joblib backend (default loky; dask/ray: see docs/scale.md).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Dask scheduler (tcp://HOST:8786) or Ray address; default: a local cluster.")
@results_option
@click.option("--rerun", is_flag=True, help="Recompute rows that already exist.")
@click.option("--prompts", type=click.Path(dir_okay=False), default=None,
              help="JSON file of class phrases and prompt templates for the text methods "
                   "(zeroshot, textlinear, clap, tipadapter, tipadapter_f, lppp); default: "
                   "the workspace dataset's prompts file, else the prompts shipped for the "
                   "dataset (folder/csv datasets: class names).")
@click.option("--weights-dir", type=click.Path(file_okay=False), default=None,
              help="Where a vision-language model's weights and tokenizer are (text methods; "
                   "default: $EMBEDCYTO_WEIGHTS).")
@click.option("--save-model", "save_dir", type=click.Path(file_okay=False), default=None,
              help="Also fit each full-data probe on the training split and save it under "
                   "DIR/<dataset>/<model>/<method>/ for `embedcyto predict`.")
def probe(datasets, models, store, episodes, shots, seeds, methods, centre, n_jobs, backend,
          scheduler, results_dir, rerun, save_dir, prompts, weights_dir):
    """Probe cached features: linear (C on val), kNN (k on val), few-shot episodes.

    Every option and every (dataset, shots) pair is checked before any probe runs. Results go
    to one JSON line per task in RESULTS/<dataset>.jsonl; rows already there for the same store
    are reused unless --rerun, and several probe runs may share one results folder. Numbers
    below are percent: mean ± std over seeds, or ± the 95 % confidence interval over episodes
    when there is one seed. A damaged store is left out and named with its fix; the others are
    probed, and the command then exits with status 1.
    """
    from embedcyto.probes.results import row_key
    from embedcyto.probes.runner import ProbeGridConfig, run_probe_grid
    from embedcyto.store import default_store_dir
    from embedcyto.workspace.current import current_workspace
    from embedcyto.workspace.run import dataset_prompts, probe_datasets

    ws = current_workspace()
    store = default_store_dir(store)
    options = {"simpleshot": {"centre": centre}} if centre else {}
    config = ProbeGridConfig(store_dir=store, datasets=probe_datasets(ws, store, datasets),
                             models=models or None, methods=methods, shots=shots, seeds=seeds,
                             episodes=episodes, n_jobs=n_jobs,
                             results_dir=results_dir, rerun=rerun,
                             options=options, backend=backend, scheduler=scheduler,
                             prompts=dataset_prompts(ws, prompts), weights_dir=weights_dir)
    before = _existing_keys(config.results_folder)
    rows = run_probe_grid(config)
    click.echo(format_table(rows))
    reused = 0 if rerun else sum(row_key(r) in before for r in rows)
    click.echo(f"\n{len(rows)} result rows in {config.results_folder}/ "
               f"({', '.join(sorted({r['dataset'] + '.jsonl' for r in rows}))}): "
               f"{len(rows) - reused} computed now, {reused} already there")
    if save_dir:
        from embedcyto.saved_probe import SAVABLE, fit_and_save

        for store_path, method in sorted({(r["store_path"], r["method"]) for r in rows
                                          if r["method"] in SAVABLE}):
            click.echo(f"saved probe: {fit_and_save(store_path, method, save_dir)}")
    rows.raise_for_skipped()
