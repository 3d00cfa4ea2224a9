"""``embedcyto extract``: run frozen backbones over datasets into feature stores."""

from __future__ import annotations

import click

from embedcyto.cli._common import (
    open_for_store,
    runtime_options,
    split_options,
    store_option,
    weights_options,
)


@click.command()
@click.option("--model", "models", multiple=True, required=True,
              help="Backbone card (repeatable; see `embedcyto models list`).")
@click.option("--dataset", "adapters", multiple=True, required=True,
              help="Dataset adapter (repeatable, paired in order with --root).")
@click.option("--root", "roots", multiple=True, required=True, type=click.Path(),
              help="Dataset root folder (one per --dataset).")
@click.option("--name", default=None, help="Dataset name for folder/csv datasets.")
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
def extract(models, adapters, roots, name, store, weights, weights_dir, random_weights, device,
            precision, batch_size, workers, dtype, force, quiet, shard, split_seed, ratios,
            on_bad_image, options) -> None:
    """Extract embeddings of each --model over each --dataset/--root pair into the store.

    Re-running the same command is a cache hit; an interrupted run resumes where it stopped.
    Started by torchrun, every rank computes its share of the rows and rank 0 writes the store.
    """
    from embedcyto.backbones import get_card
    from embedcyto.distributed import RankEnv, process_group
    from embedcyto.extract import ExtractConfig
    from embedcyto.store import default_store_dir
    from embedcyto.store.shards import Shard

    if len(adapters) != len(roots):
        raise click.UsageError(f"{len(adapters)} --dataset but {len(roots)} --root: give one "
                               "--root per --dataset, in the same order")
    if weights and len(models) > 1:
        raise click.UsageError("--weights names one model's file: use it with one --model")
    env = RankEnv.from_env()
    if env is not None and shard:
        raise click.UsageError("--shard is for separately started processes; under torchrun "
                               "every rank already computes its own shard: drop --shard")
    job = {"cards": [get_card(m) for m in models], "store_dir": default_store_dir(store),
           "weights": weights, "weights_dir": weights_dir, "random_init": random_weights,
           "shard": Shard.parse(shard) if shard else None,
           "open": {"name": name, "split_seed": split_seed, "ratios": ratios,
                    "on_bad_image": on_bad_image, "options": options}}
    if env is None:
        config = ExtractConfig(batch_size=batch_size, num_workers=workers, device=device,
                               precision=precision, store_dtype=dtype, force=force,
                               progress=not quiet)
        _extract_all(job, zip(adapters, roots), config, None)
        return
    device = env.device(device)
    config = ExtractConfig(batch_size=batch_size, num_workers=workers, device=device,
                           precision=precision, store_dtype=dtype, force=force,
                           progress=not quiet and env.rank == 0)
    with process_group(env, device) as ranks:
        _extract_all(job, zip(adapters, roots), config, ranks)


def _extract_all(job: dict, pairs, config, ranks) -> None:
    """Every (dataset, model) pair: alone, as one --shard, or as this rank's part of a job."""
    from embedcyto.distributed import extract_sharded
    from embedcyto.extract import extract_features

    cards, store_dir = job["cards"], job["store_dir"]
    verbose = ranks is None or ranks.rank == 0
    verify_size = max(c.input_size for c in cards)
    for adapter, root in pairs:
        def opener(adapter=adapter, root=root, verify_size=verify_size):
            opts = job["open"]
            return open_for_store(
                adapter, root, store_dir=store_dir, name=opts["name"],
                split_seed=opts["split_seed"], ratios=opts["ratios"],
                on_bad_image=opts["on_bad_image"], options=opts["options"],
                verify_size=verify_size)

        dataset, split_dir = opener() if ranks is None else ranks.rank0_first(opener)
        if verbose:
            _report_skipped(dataset)
        kwargs = {"store_dir": store_dir, "split_dir": split_dir, "weights": job["weights"],
                  "weights_dir": job["weights_dir"], "random_init": job["random_init"],
                  "config": config}
        for card in cards:
            if ranks is not None:
                result = extract_sharded(dataset, card, ranks=ranks, **kwargs)
            else:
                result = extract_features(dataset, card, shard=job["shard"], **kwargs)
            if verbose:
                click.echo(_summary(dataset.name, card.name, result, ranks))


def _report_skipped(dataset) -> None:
    if not dataset.skipped:
        return
    click.echo(f"{dataset.name}: {len(dataset.skipped)} image(s) left out:", err=True)
    for path, reason in dataset.skipped[:20]:
        click.echo(f"  {path}: {reason}", err=True)
    if len(dataset.skipped) > 20:
        click.echo(f"  ... and {len(dataset.skipped) - 20} more (all listed in the store's "
                   "skipped_images attribute)", err=True)


def _summary(dataset: str, model: str, result, ranks=None) -> str:
    head = f"{dataset}/{model}: {result.rows} rows"
    if result.shard:
        head = f"{dataset}/{model} shard {result.shard}: {result.rows} rows"
    if ranks is not None:
        head += f" ({ranks.world_size} ranks)"
    if result.cache_hit:
        return f"{head}, cache hit (nothing computed) -> {result.path}"
    resumed = f", {result.resumed} resumed" if result.resumed else ""
    line = (f"{head}, {result.computed} computed{resumed} in {result.seconds:.1f} s "
            f"({result.images_per_second:.1f} img/s) -> {result.path}")
    if result.shard:
        line += (f"\nwhen every shard is done: embedcyto store merge --dataset {dataset} "
                 f"--model {model} --store {result.path.parent.parent.parent}")
    return line
