"""``embedcyto lora``: LoRA fine-tuning runs, their test metrics, and adapted features."""

from __future__ import annotations

import click

from embedcyto.cli._common import (
    comma_list,
    runtime_options,
    split_options,
    store_option,
    weights_options,
)
from embedcyto.cli._workspace import dataset_options, resolve_job
from embedcyto.lora.config import DEFAULT_EPOCHS, HEADS, LoraRunConfig, LoraSettings, default
from embedcyto.schedule import STUDY_WARMUP

#: Options that say what a run learns: in plan mode they come from the workspace's plan.
TRAINING_OPTIONS = ("label_space", "targets", "rank", "alpha", "dropout", "scaling", "lr",
                    "weight_decay", "warmup", "min_lr", "iterations", "epochs", "batch_size",
                    "eval_every", "best_val", "grad_checkpointing", "seeds", "head",
                    "text_lora")


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


def _adhoc_runs(job, amounts, seeds, settings, options, runs_dir) -> list:
    """The runs of the command line (no plan): every dataset × model × amount × seed."""
    from embedcyto.lora.runs import is_complete, run_dir
    from embedcyto.workspace.lora_plan import PlannedRun

    out = []
    for entry in job.entries:
        for m in job.models:
            for amount in amounts:
                for s in seeds:
                    config = LoraRunConfig(model=m, dataset=entry.name, seed=s,
                                           settings=settings, **amount, **options)
                    path = run_dir(runs_dir, config)
                    out.append(PlannedRun("command line", config, path, is_complete(path)))
    return out


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
@click.option("--model", "models", multiple=True,
              help="Backbone card (repeatable). With a workspace plan: only these models.")
@dataset_options
@click.option("--plan", "plans", multiple=True,
              help="Run only this [lora.NAME] plan of the workspace (repeatable).")
@click.option("--dry-run", is_flag=True,
              help="Print the runs (done / to run) and the estimated time; train nothing.")
@click.option("--shots", callback=comma_list(int), default=None,
              help="Few-shot: K training images per class, e.g. 1,2,4 (the probe stage's "
                   "support sets). With a workspace plan: only these shots.")
@click.option("--fraction", "fractions", callback=comma_list(float), default=None,
              help="Percent of each class of train and val, e.g. 1,10,100. With a workspace "
                   "plan: only these fractions.")
@click.option("--all", "all_data", is_flag=True, help="Train on the whole training split.")
@click.option("--seeds", "--seed", "seeds", callback=comma_list(int), default="1",
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
@click.option("--head", type=click.Choice(HEADS), **_show("head"),
              help="linear: the study's trained linear head; text: the model's own zero-shot "
                   "classifier (cosine to its prompt-ensembled class text embeddings times its "
                   "logit scale, kept fixed; vision-language models only).")
@click.option("--text-lora", is_flag=True,
              help="With --head text: LoRA on the text encoder's attention too (same settings), "
                   "the class embeddings recomputed from it at every step.")
@click.option("--prompts", type=click.Path(dir_okay=False), default=None,
              help="JSON file of class phrases and prompt templates for --head text (default: "
                   "the workspace dataset's prompts, else those shipped for the dataset).")
@weights_options
@runtime_options
@store_option
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False), default=None,
              help="Run folders go to RUNS/lora/... (default: the workspace's, else ./runs).")
@click.option("--export-features", is_flag=True,
              help="Write the adapted embeddings of the whole dataset into the store as model "
                   "<model>+lora-<shots-K|frac-P|all>-s<seed>.")
@click.option("--rerun", is_flag=True, help="Train again even when the run is already done.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@split_options
@click.pass_context
def lora(ctx, models, datasets, layout, root, save, plans, dry_run, shots, fractions, all_data,
         seeds, label_space, targets, rank, alpha, dropout, scaling, lr, weight_decay, warmup,
         min_lr, iterations, epochs, batch_size, eval_every, best_val, grad_checkpointing,
         head, text_lora, prompts, device, precision, workers, weights, weights_dir,
         random_weights, store, runs_dir, export_features, rerun, quiet, split_seed, ratios,
         on_bad_image, options) -> None:
    """Fine-tune LoRA adapters (q and v by default) and a linear head; test; save the run.

    In a workspace with [lora] plans, plain `embedcyto lora` trains every planned run not yet
    complete, in a fixed order (stop it any time and run it again to resume); --model,
    --dataset, --shots, --fraction and --plan narrow the plan, --dry-run prints it with the
    estimated time. Otherwise give the runs: --shots K, --fraction P or --all, on workspace
    datasets or on --dataset NAME --layout LAYOUT --root PATH.

    Few-shot runs (--shots K --seeds S) train on exactly the support set that `embedcyto probe`
    uses for episode 0 of (K, S). A finished run is not redone (--rerun); an interrupted one
    leaves no finished-looking folder and is simply started again. Started by torchrun, the
    ranks share every batch (DistributedDataParallel) and rank 0 writes the run folder.
    """
    from embedcyto.lora.runs import default_runs_dir
    from embedcyto.workspace.current import current_workspace

    ws = current_workspace()
    plan_mode = ws is not None and bool(ws.lora) and root is None and not all_data
    if plans and not plan_mode:
        raise click.UsageError("--plan picks a [lora.NAME] plan of the workspace, and there is "
                               "none here (or --root/--all asks for other runs)")
    runs_dir = default_runs_dir(runs_dir)
    runtime = {"device": device, "precision": precision, "num_workers": workers}
    # Every argument is checked (all runs built) before torch, h5py or a dataset is touched.
    if plan_mode:
        given = [f"--{n.replace('_', '-')}" for n in TRAINING_OPTIONS
                 if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(
                f"{', '.join(given)}: the workspace's LoRA plans set how runs train (edit "
                "[lora.NAME.settings] in the workspace), or give --root/--all for other runs")
        job = resolve_job(models, datasets, store=store, weights_dir=weights_dir,
                          need_models=False)
        runs = _plan_runs(ws, runs_dir, plans, models, datasets, shots, fractions, runtime)
    else:
        if ws is not None and not (shots or fractions or all_data):
            raise click.UsageError("the workspace has no [lora.NAME] plan: add one (models, "
                                   "shots or fractions, seeds; docs/workspace.md), or give "
                                   "--shots K, --fraction P or --all")
        job = resolve_job(models, datasets, layout=layout, root=root, save=save, store=store,
                          weights_dir=weights_dir, options=tuple(options.items()),
                          split_seed=split_seed, ratios=ratios)
        settings = LoraSettings(rank=rank, alpha=alpha, dropout=dropout, targets=targets,
                                rslora=scaling == "rslora")
        run_options = {"label_space": label_space, "lr": lr, "weight_decay": weight_decay,
                       "warmup": warmup, "min_lr": min_lr, "batch_size": batch_size,
                       "iterations": iterations, "epochs": epochs, "eval_every": eval_every,
                       "best_val": best_val, "grad_checkpointing": grad_checkpointing,
                       "head": head, "text_lora": text_lora, **runtime}
        runs = _adhoc_runs(job, _amounts(shots, fractions, all_data), seeds, settings,
                           run_options, runs_dir)
    if dry_run:
        from embedcyto.workspace.run import lora_plan_lines

        for line in lora_plan_lines(runs, runs_dir):
            click.echo(line)
        return
    _start(runs, job, {"runs_dir": runs_dir, "weights": weights, "random": random_weights,
                       "rerun": rerun, "export": export_features, "workers": workers,
                       "on_bad_image": on_bad_image, "device": device, "prompts": prompts},
           quiet)


def _plan_runs(ws, runs_dir, plans, models, datasets, shots, fractions, runtime) -> list:
    from embedcyto.workspace.lora_plan import planned_runs

    return planned_runs(ws, runs_dir, plans=plans, models=models, datasets=datasets,
                        shots=shots or (), fractions=fractions or (), device=runtime["device"],
                        extra={k: v for k, v in runtime.items()
                               if k != "device" and v not in (None, "auto")})


def _start(runs: list, job, run: dict, quiet: bool) -> None:
    """Check inputs, then train alone or as one rank of a torchrun job."""
    from dataclasses import replace

    from embedcyto.backbones import get_card
    from embedcyto.distributed import RankEnv, process_group
    from embedcyto.errors import LoraError
    from embedcyto.lora.runs import conflicts

    names = {r.config.model for r in runs}
    if run["prompts"] and not any(r.config.head == "text" for r in runs):
        raise click.UsageError("--prompts sets the class prompts of a text head: add --head "
                               "text, or drop --prompts (the linear head uses no prompts)")
    if run["weights"] and len(names) > 1:
        raise click.UsageError("--weights names one model's file: use it with one --model")
    clashes = [] if run["rerun"] else conflicts(run["runs_dir"], [r.config for r in runs])
    if clashes:
        raise LoraError(f"{len(clashes)} of these runs already finished with other settings "
                        "(nothing was trained):\n  " + "\n  ".join(clashes) + "\npass --rerun "
                        "to replace them, or --runs DIR to keep both")
    todo = [r for r in runs if run["rerun"] or not r.done]
    wanted = {r.config.dataset for r in runs}
    run["entries"] = [e for e in job.entries if e.name in wanted]
    if not run["random"]:
        from embedcyto.workspace.preflight import check_inputs

        check_inputs("lora", [e for e in run["entries"]
                              if e.name in {r.config.dataset for r in todo}],
                     job.workspace, sorted({r.config.model for r in todo}), job.weights_dir,
                     weights=run["weights"])
    run["cards"] = [get_card(m) for m in sorted(names)]
    env = RankEnv.from_env()
    if env is None:
        _run_all(runs, job, run, None, progress=not quiet)
        return
    device = env.device(run["device"])
    runs = [replace(r, config=replace(r.config, device=device)) for r in runs]
    with process_group(env, device) as ranks:
        _run_all(runs, job, run, ranks, progress=not quiet and env.rank == 0)


def _run_all(runs: list, job, run: dict, ranks, progress: bool) -> None:
    """Every run, alone or as this rank's part of a torchrun job.

    Under torchrun rank 0 opens the datasets first (it may write the split files), prints the
    summaries and exports the adapted features; the other ranks only train.
    """
    from embedcyto.lora.export import export_features as export
    from embedcyto.workspace.run import open_all, train_runs

    main = ranks is None or ranks.rank == 0
    done = [r for r in runs if r.done and not run["rerun"]]
    if main and len(runs) > 1:
        click.echo(f"lora: {len(runs)} runs, {len(done)} already done, "
                   f"{len(runs) - len(done)} to run")
    opened = open_all(run["entries"], job.workspace, job.store_dir,
                      on_bad_image=run["on_bad_image"],
                      verify_size=max(c.input_size for c in run["cards"]), ranks=ranks)

    def finished(result) -> None:
        if main:
            click.echo(summary_line(result))
        if not run["export"]:
            return
        dataset, split_dir = opened[result.config.dataset]

        def exported(result=result):
            return export(dataset, result.run_dir, store_dir=job.store_dir,
                          split_dir=split_dir, weights=run["weights"],
                          weights_dir=job.weights_dir, num_workers=run["workers"],
                          force=run["rerun"] and not result.skipped, progress=progress)

        out = exported() if ranks is None else ranks.on_rank0(exported)
        if main:
            state = "cache hit" if out.cache_hit else f"{out.computed} rows computed"
            click.echo(f"  adapted features ({out.rows} rows, {state}) -> {out.path}")

    from embedcyto.workspace.run import dataset_prompts

    train_runs(runs, opened, runs_dir=run["runs_dir"], weights=run["weights"],
               weights_dir=job.weights_dir, random_init=run["random"], rerun=run["rerun"],
               progress=progress, ranks=ranks, on_result=finished,
               prompts=dataset_prompts(job.workspace, run["prompts"]))
