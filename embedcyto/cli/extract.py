"""``embedcyto extract``: run frozen backbones over datasets into feature stores."""

from __future__ import annotations

import click

from embedcyto.cli._common import (
    runtime_options,
    split_options,
    store_option,
    weights_options,
)
from embedcyto.cli._workspace import dataset_options, resolve_job


@click.command()
@click.option("--model", "models", multiple=True,
              help="Backbone card (repeatable; default: the workspace's models; see "
                   "`embedcyto models list`).")
@dataset_options
@store_option
@weights_options
@runtime_options
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="Feature dtype on disk.")
@click.option("--force", is_flag=True,
              help="Rebuild a store made from other inputs (the old one stays until done).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--shard", default=None, metavar="I/N",
              help="Compute only shard I of N (0-based) into its own part; join the parts with "
                   "`embedcyto store merge`. Under torchrun each rank takes its shard itself.")
@split_options
def extract(models, datasets, layout, root, save, store, weights, weights_dir, random_weights,
            device, precision, batch_size, workers, dtype, force, quiet, shard, split_seed,
            ratios, on_bad_image, options) -> None:
    """Extract embeddings of each --model over each dataset into the store.

    In a workspace, `embedcyto extract --model quilt` runs over every dataset of the workspace
    (--dataset NAME narrows it) and plain `embedcyto extract` over its default models. Without
    one, or for other images: `--dataset NAME --layout LAYOUT --root PATH` (--save remembers it
    in the workspace). Missing roots and weights are all listed before any work starts;
    finished stores are cache hits and an interrupted run resumes where it stopped. Started by
    torchrun, every rank computes its share of the rows and rank 0 writes the store.
    """
    from embedcyto.backbones import get_card
    from embedcyto.distributed import RankEnv, process_group
    from embedcyto.extract import ExtractConfig
    from embedcyto.store.shards import Shard
    from embedcyto.workspace.preflight import check_inputs

    job = resolve_job(models, datasets, layout=layout, root=root, save=save, store=store,
                      weights_dir=weights_dir, options=tuple(options.items()),
                      split_seed=split_seed, ratios=ratios)
    if weights and len(job.models) > 1:
        raise click.UsageError("--weights names one model's file: use it with one --model")
    env = RankEnv.from_env()
    if env is not None and shard:
        raise click.UsageError("--shard is for separately started processes; under torchrun "
                               "every rank already computes its own shard: drop --shard")
    check_inputs("extract", job.entries, job.workspace,
                 () if random_weights else job.models, job.weights_dir, weights=weights)
    cards = [get_card(m) for m in job.models]
    run = {"job": job, "cards": cards, "weights": weights, "random": random_weights,
           "on_bad_image": on_bad_image, "shard": Shard.parse(shard) if shard else None}
    if env is None:
        run["config"] = ExtractConfig(batch_size=batch_size, num_workers=workers, device=device,
                                      precision=precision, store_dtype=dtype, force=force,
                                      progress=not quiet)
        _extract_all(run, None)
        return
    device = env.device(device)
    run["config"] = ExtractConfig(batch_size=batch_size, num_workers=workers, device=device,
                                  precision=precision, store_dtype=dtype, force=force,
                                  progress=not quiet and env.rank == 0)
    with process_group(env, device) as ranks:
        _extract_all(run, ranks)


def _extract_all(run: dict, ranks) -> None:
    """Every (dataset, model) pair: alone, as one --shard, or as this rank's part of a job."""
    from embedcyto.workspace.run import extract_stores, extract_table, open_all

    job, cards = run["job"], run["cards"]
    verbose = ranks is None or ranks.rank == 0
    opened = open_all(job.entries, job.workspace, job.store_dir,
                      on_bad_image=run["on_bad_image"],
                      verify_size=max(c.input_size for c in cards), ranks=ranks)
    if verbose:
        for dataset, _ in opened.values():
            _report_skipped(dataset)

    def echo(line) -> None:
        if verbose:
            click.echo(_summary(line, ranks))

    lines = extract_stores(opened, cards, store_dir=job.store_dir, config=run["config"],
                           weights=run["weights"], weights_dir=job.weights_dir,
                           random_init=run["random"], shard=run["shard"], ranks=ranks,
                           on_line=echo)
    if verbose and len(lines) > 1:
        click.echo("")
        for text in extract_table(lines):
            click.echo(text)


def _report_skipped(dataset) -> None:
    if not dataset.skipped:
        return
    click.echo(f"{dataset.name}: {len(dataset.skipped)} image(s) left out:", err=True)
    for path, reason in dataset.skipped[:20]:
        click.echo(f"  {path}: {reason}", err=True)
    if len(dataset.skipped) > 20:
        click.echo(f"  ... and {len(dataset.skipped) - 20} more (all listed in the store's "
                   "skipped_images attribute)", err=True)


def _summary(line, ranks=None) -> str:
    head = f"{line.dataset}/{line.model}: {line.rows} rows"
    if line.shard:
        head = f"{line.dataset}/{line.model} shard {line.shard}: {line.rows} rows"
    if ranks is not None:
        head += f" ({ranks.world_size} ranks)"
    if line.cached:
        return f"{head}, cache hit (nothing computed) -> {line.path}"
    resumed = f", {line.resumed} resumed" if line.resumed else ""
    text = (f"{head}, {line.computed} computed{resumed} in {line.seconds:.1f} s "
            f"({line.images_per_second:.1f} img/s) -> {line.path}")
    if line.shard:
        text += (f"\nwhen every shard is done: embedcyto store merge --dataset {line.dataset} "
                 f"--model {line.model} --store {line.path.parent.parent.parent}")
    return text
