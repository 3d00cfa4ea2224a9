"""``embedcyto probe``: linear, kNN and few-shot probes on cached features."""

from __future__ import annotations

import click


def _int_list(ctx, param, value: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out:
        raise click.BadParameter("give at least one value")
    return out


def _methods(ctx, param, value: str) -> tuple[str, ...]:
    from embedcyto.probes.evaluate import METHODS

    out = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [m for m in out if m not in METHODS]
    if unknown or not out:
        raise click.BadParameter(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    return out


def _fmt(row: dict, metric: str) -> str:
    from embedcyto.metrics import mean_std

    values = row["values"][metric]
    mean, std = mean_std(values)
    if row.get("ci") is not None and len(values) == 1:
        return f"{100 * mean:5.1f}±{100 * row['ci'][metric]:.1f}"
    return f"{100 * mean:5.1f}±{100 * std:.1f}"


def summarise(rows: list[dict]) -> list[dict]:
    """Group rows over seeds: one line per (dataset, model, method, shots)."""
    groups: dict[tuple, dict] = {}
    for r in rows:
        key = (r["dataset"], r["model"], r["method"], r["shots"])
        g = groups.setdefault(key, {"key": key, "values": {}, "levels": {}, "ci": r.get("ci")})
        for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
            g["values"].setdefault(metric, []).append(r["metrics"][metric])
        for name, level in (r.get("levels") or {}).items():
            acc = level if name == "average" else level["accuracy"]
            acc = acc["mean"] if isinstance(acc, dict) else acc
            g["levels"].setdefault(name, []).append(acc)
    return list(groups.values())


def format_table(rows: list[dict]) -> str:
    """A compact text table: accuracy, balanced accuracy, macro-F1 in percent (± std or CI)."""
    lines = [f"{'dataset':<10} {'model':<12} {'method':<10} {'shots':>5}  "
             f"{'accuracy':>10} {'bal.acc':>10} {'macro-F1':>10}  levels (L1/L2/L3/avg)"]
    for g in summarise(rows):
        dataset, model, method, shots = g["key"]
        levels = "/".join(f"{100 * sum(v) / len(v):.1f}" for v in g["levels"].values())
        lines.append(
            f"{dataset:<10} {model:<12} {method:<10} {shots if shots else 'all':>5}  "
            f"{_fmt(g, 'accuracy'):>10} {_fmt(g, 'balanced_accuracy'):>10} "
            f"{_fmt(g, 'macro_f1'):>10}  {levels}")
    return "\n".join(lines)


@click.command("probe")
@click.option("--dataset", "datasets", multiple=True,
              help="Dataset name (repeat; default: the workspace's datasets with a store, else "
                   "every dataset of the store folder).")
@click.option("--model", "models", multiple=True, help="Model name (repeat; default: all).")
@click.option("--store", "store", default=None,
              help="Store folder (default: $EMBEDCYTO_STORE, the workspace's, else ./cache).")
@click.option("--episodes", default=600, show_default=True, type=click.IntRange(min=1),
              help="Few-shot episodes per (shots, seed).")
@click.option("--shots", default="1,2,4,8,16", show_default=True, callback=_int_list)
@click.option("--seeds", default="1,2,3", show_default=True, callback=_int_list)
@click.option("--methods", default="linear,knn,simpleshot", show_default=True,
              callback=_methods, help="linear, knn, study_head, simpleshot, protonet.")
@click.option("--n-jobs", default=None, type=int,
              help="joblib workers (default: 1 locally, every worker with dask or ray).")
@click.option("--backend", type=click.Choice(["loky", "threading", "dask", "ray"]),
              default=None, help="joblib backend (default loky; dask/ray: see docs/scale.md).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Dask scheduler (tcp://HOST:8786) or Ray address; default: a local cluster.")
@click.option("--results", "results_dir", default=None,
              help="Results folder (default: the workspace's results/probe, else "
                   "./results/probe).")
@click.option("--rerun", is_flag=True, help="Recompute rows that already exist.")
@click.option("--save-model", "save_dir", type=click.Path(file_okay=False), default=None,
              help="Also fit each full-data probe on the training split and save it under "
                   "DIR/<dataset>/<model>/<method>/ for `embedcyto predict`.")
def probe(datasets, models, store, episodes, shots, seeds, methods, n_jobs, backend, scheduler,
          results_dir, rerun, save_dir):
    """Probe cached features: linear (C on val), kNN (k on val), few-shot episodes.

    Results go to one JSON line per task in RESULTS/<dataset>.jsonl; rows already there for the
    same store are reused unless --rerun. Numbers below are percent: mean ± std over seeds, or
    ± the 95 % confidence interval over episodes when there is one seed.
    """
    from embedcyto.probes.runner import run_probe_grid
    from embedcyto.store import default_store_dir
    from embedcyto.workspace.current import current_workspace
    from embedcyto.workspace.run import probe_datasets, probe_results_dir

    ws = current_workspace()
    store = default_store_dir(store)
    if not datasets:
        datasets = probe_datasets(ws, store)
    where = probe_results_dir(ws, results_dir)
    rows = run_probe_grid(store, datasets or None, models or None, methods, shots, seeds,
                          episodes, n_jobs, where, rerun, backend=backend,
                          scheduler=scheduler)
    click.echo(format_table(rows))
    click.echo(f"\n{len(rows)} result rows in {where}/ "
               f"({', '.join(sorted({r['dataset'] + '.jsonl' for r in rows}))})")
    if save_dir:
        from embedcyto.saved_probe import SAVABLE, fit_and_save

        for store_path, method in sorted({(r["store_path"], r["method"]) for r in rows
                                          if r["method"] in SAVABLE}):
            click.echo(f"saved probe: {fit_and_save(store_path, method, save_dir)}")
