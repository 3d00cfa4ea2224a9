"""``embedcyto lora``: LoRA fine-tuning runs, their test metrics, and adapted features."""

from __future__ import annotations

import click

from embedcyto.cli._common import (
    open_for_store,
    runtime_options,
    split_options,
    store_option,
    weights_options,
)
from embedcyto.lora.config import DEFAULT_EPOCHS, LoraRunConfig, LoraSettings, default
from embedcyto.schedule import STUDY_WARMUP


def _numbers(kind):
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            out = tuple(kind(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") \
                from None
        if not out:
            raise click.BadParameter("give at least one value")
        return out
    return parse


def _targets(ctx, param, value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _amounts(shots, fractions, all_data) -> list[dict]:
    given = [name for name, v in (("--shots", shots), ("--fraction", fractions),
                                  ("--all", all_data or None)) if v]
    if len(given) != 1:
        raise click.UsageError(
            "give exactly one of --shots K (few-shot support sets), --fraction P (percent of "
            "each class) or --all" + (f"; got {' and '.join(given)}" if given else ""))
    if shots:
        return [{"shots": k} for k in shots]
    if fractions:
        return [{"fraction": p} for p in fractions]
    return [{}]


def _configs(models, dataset_name, amounts, seeds, settings, options) -> list:
    return [LoraRunConfig(model=m, dataset=dataset_name, seed=s, settings=settings, **amount,
                          **options)
            for m in models for amount in amounts for s in seeds]


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def summary_line(result) -> str:
    """One line per run: what it was, its test metrics, and where its folder is."""
    config, metrics = result.config, result.metrics
    head = f"{config.dataset}/{config.model} {config.mode} seed-{config.seed}"
    test = metrics.get("test", {})
    text = (f"{head}: accuracy {_percent(test.get('accuracy'))}, balanced accuracy "
            f"{_percent(test.get('balanced_accuracy'))}, macro-F1 "
            f"{_percent(test.get('macro_f1'))}")
    levels = metrics.get("levels")
    if levels:
        parts = [f"{name} {_percent(level['accuracy'])}" for name, level in levels.items()
                 if name != "average"]
        text += f"; {', '.join(parts)}, average {_percent(levels['average'])}"
    if metrics.get("study25"):
        text += f"; study-25 flat {_percent(metrics['study25']['accuracy'])}"
    if result.skipped:
        text += " (already done; --rerun to redo)"
    else:
        text += f" ({metrics.get('iterations')} steps, {result.seconds:.1f} s)"
    return f"{text} -> {result.run_dir}"


def _show(name: str):
    """click keyword arguments that show a :class:`LoraRunConfig` default (defined there once)."""
    value = default(name)
    if isinstance(value, tuple):
        value = ",".join(value)
    return {"default": value, "show_default": True}


@click.command("lora")
@click.option("--model", "models", multiple=True, required=True,
              help="Backbone card (repeatable; see `embedcyto models list`).")
@click.option("--dataset", "adapter", required=True, help="Dataset adapter (sipakmed, mlcc, "
              "bcfc, hicervix, folder, csv).")
@click.option("--root", required=True, type=click.Path(), help="Dataset root folder.")
@click.option("--name", default=None, help="Dataset name for folder/csv datasets.")
@click.option("--shots", callback=_numbers(int), default=None,
              help="Few-shot: K training images per class, e.g. 1,2,4 (the probe stage's "
                   "support sets).")
@click.option("--fraction", "fractions", callback=_numbers(float), default=None,
              help="Percent of each class of train and val, e.g. 1,10,100.")
@click.option("--all", "all_data", is_flag=True, help="Train on the whole training split.")
@click.option("--seeds", "--seed", "seeds", callback=_numbers(int), default="1",
              show_default=True, help="Seeds, e.g. 1,2,3 (one run per seed).")
@click.option("--label-space", **_show("label_space"),
              help="Classes the head learns: 'classes' (the dataset's own; HiCervix: the 26 "
                   "annotated classes) or a label space of the dataset (HiCervix: level_1, "
                   "level_2, level_3, level_3_study25); images without such a label are not "
                   "trained on.")
@click.option("--targets", callback=_targets, **_show("targets"),
              help="Attention projections to adapt, from q, k, v, o.")
@click.option("--rank", type=int, **_show("rank"), help="LoRA rank r.")
@click.option("--alpha", type=float, **_show("alpha"), help="LoRA alpha.")
@click.option("--dropout", type=float, **_show("dropout"), help="Dropout on the LoRA input.")
@click.option("--scaling", type=click.Choice(["rslora", "standard"]),
              default="rslora" if default("rslora") else "standard", show_default=True,
              help="rslora: alpha/sqrt(r) (the study); standard: alpha/r.")
@click.option("--lr", type=float, **_show("lr"), help="Peak learning rate.")
@click.option("--weight-decay", type=float, **_show("weight_decay"), help="AdamW weight decay.")
@click.option("--warmup", type=int, default=None,
              help=f"Warm-up steps (default: {STUDY_WARMUP}, at most half the run).")
@click.option("--min-lr", type=float, **_show("min_lr"),
              help="Learning rate at the end of the cosine decay.")
@click.option("--iterations", type=int, default=None,
              help="Training steps (default: 50 + 50*K for K shots, "
                   f"{DEFAULT_EPOCHS} epochs otherwise).")
@click.option("--epochs", type=int, default=None,
              help="Run length as passes over the training images (instead of --iterations).")
@click.option("--batch-size", type=int, **_show("batch_size"), help="Images per step.")
@click.option("--eval-every", type=int, default=None,
              help="Validation every N steps (default: ten times per run; 0: at the end).")
@click.option("--best-val", is_flag=True,
              help="Test the adapters and head of the step with the best validation accuracy.")
@click.option("--grad-checkpointing", is_flag=True,
              help="Recompute activations in the backward pass: less memory, more compute.")
@weights_options
@runtime_options
@store_option
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False), default=None,
              help="Run folders go to RUNS/lora/... (default: ./runs).")
@click.option("--export-features", is_flag=True,
              help="Write the adapted embeddings of the whole dataset into the store as model "
                   "<model>+lora-<shots-K|frac-P|all>-s<seed>.")
@click.option("--rerun", is_flag=True, help="Train again even when the run is already done.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@split_options
def lora(models, adapter, root, name, shots, fractions, all_data, seeds, label_space, targets,
         rank, alpha, dropout, scaling, lr, weight_decay, warmup, min_lr, iterations, epochs,
         batch_size, eval_every, best_val, grad_checkpointing, device, precision, workers,
         weights, weights_dir, random_weights, store, runs_dir, export_features, rerun, quiet,
         split_seed, ratios, on_bad_image, options) -> None:
    """Fine-tune LoRA adapters (q and v by default) and a linear head; test; save the run.

    Few-shot runs (--shots K --seeds S) train on exactly the support set that `embedcyto probe`
    uses for episode 0 of (K, S). A finished run is not redone (--rerun); an interrupted one
    leaves no finished-looking folder and is simply started again. Started by torchrun, the
    ranks share every batch (DistributedDataParallel) and rank 0 writes the run folder.
    """
    from embedcyto.backbones import get_card

    if weights and len(models) > 1:
        raise click.UsageError("--weights names one model's file: use it with one --model")
    # Every argument is checked before torch, h5py or a dataset is touched.
    cards = [get_card(m) for m in models]
    settings = LoraSettings(rank=rank, alpha=alpha, dropout=dropout, targets=targets,
                            rslora=scaling == "rslora")
    run_options = {"label_space": label_space, "lr": lr, "weight_decay": weight_decay,
                   "warmup": warmup, "min_lr": min_lr, "batch_size": batch_size,
                   "iterations": iterations, "epochs": epochs, "eval_every": eval_every,
                   "best_val": best_val, "grad_checkpointing": grad_checkpointing,
                   "device": device, "precision": precision, "num_workers": workers}
    amounts = _amounts(shots, fractions, all_data)
    _configs([c.name for c in cards], name or adapter, amounts, seeds, settings, run_options)
    _start({"amounts": amounts, "cards": cards, "seeds": seeds, "store": store,
            "runs_dir": runs_dir, "weights": weights, "weights_dir": weights_dir,
            "random_init": random_weights, "rerun": rerun, "export": export_features,
            "workers": workers, "settings": settings,
            "open": {"adapter": adapter, "root": root, "name": name, "split_seed": split_seed,
                     "ratios": ratios, "on_bad_image": on_bad_image, "options": options},
            "options": run_options}, quiet)


def _start(job: dict, quiet: bool) -> None:
    """Alone, or as one rank of a torchrun job (the device is then this rank's)."""
    from embedcyto.distributed import RankEnv, process_group
    from embedcyto.store import default_store_dir

    job["store_dir"] = default_store_dir(job.pop("store"))
    env = RankEnv.from_env()
    if env is None:
        _run_all(job, None, progress=not quiet)
        return
    device = job["options"]["device"] = env.device(job["options"]["device"])
    with process_group(env, device) as ranks:
        _run_all(job, ranks, progress=not quiet and env.rank == 0)


def _open(job: dict):
    opts, cards = job["open"], job["cards"]
    return open_for_store(
        opts["adapter"], opts["root"], store_dir=job["store_dir"], name=opts["name"],
        split_seed=opts["split_seed"], ratios=opts["ratios"], on_bad_image=opts["on_bad_image"],
        options=opts["options"],
        verify_size=max(c.input_size for c in cards))


def _run_all(job: dict, ranks, progress: bool) -> None:
    """Every (model, amount, seed) run, alone or as this rank's part of a torchrun job.

    Under torchrun rank 0 opens the dataset first (it may write the split file), prints the
    summaries and exports the adapted features; the other ranks only train.
    """
    from embedcyto.lora.export import export_features as export
    from embedcyto.lora.train import train_lora

    from embedcyto.errors import LoraError
    from embedcyto.lora.runs import conflicts, default_runs_dir

    main = ranks is None or ranks.rank == 0
    dataset, split_dir = _open(job) if ranks is None else ranks.rank0_first(lambda: _open(job))
    configs = _configs([c.name for c in job["cards"]], dataset.name, job["amounts"],
                       job["seeds"], job["settings"], job["options"])
    clashes = [] if job["rerun"] else conflicts(default_runs_dir(job["runs_dir"]), configs)
    if clashes:
        raise LoraError(f"{len(clashes)} of these runs already finished with other settings "
                        "(nothing was trained):\n  " + "\n  ".join(clashes) + "\npass --rerun "
                        "to replace them, or --runs DIR to keep both")
    for config in configs:
        result = train_lora(dataset, config, runs_dir=job["runs_dir"], split_dir=split_dir,
                            weights=job["weights"], weights_dir=job["weights_dir"],
                            random_init=job["random_init"], rerun=job["rerun"],
                            progress=progress, ranks=ranks)
        if main:
            click.echo(summary_line(result))
        if not job["export"]:
            continue

        def exported(result=result):
            return export(dataset, result.run_dir, store_dir=job["store_dir"],
                          split_dir=split_dir, weights=job["weights"],
                          weights_dir=job["weights_dir"], num_workers=job["workers"],
                          force=job["rerun"] and not result.skipped, progress=progress)

        done = exported() if ranks is None else ranks.on_rank0(exported)
        if main:
            state = "cache hit" if done.cache_hit else f"{done.computed} rows computed"
            click.echo(f"  adapted features ({done.rows} rows, {state}) -> {done.path}")
