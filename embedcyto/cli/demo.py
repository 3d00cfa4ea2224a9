"""``embedcyto demo``: the whole pipeline on a generated dataset, with nothing downloaded.

Generates a SIPaKMeD-like dataset (the real folder layout, drawn cells that carry a class
signal), extracts features with the built-in random-weight cards, probes them (linear, kNN,
few-shot episodes), fine-tunes short LoRA runs and writes the report. About a minute on a
2-core CPU. The data are generated and the weights random: the numbers show that everything
runs, not how any real model performs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click

DEFAULT_OUT = "embedcyto-demo"
MARKER = ".embedcyto-demo"  # written first: only a folder carrying it is ever emptied
MODELS = ("tiny-clip", "tiny-vit")
SHOTS = (1, 2, 4)
SEEDS = (1, 2, 3)
LORA_SEEDS = (1, 2)
EPISODES = 100
LORA_STEPS = {"iterations": 60, "warmup": 6, "batch_size": 16, "eval_every": 0, "lr": 2e-2}

WARNING = ("GENERATED images and RANDOM-WEIGHT models: these numbers show that every stage "
           "runs; they say nothing about any real model or dataset.")
NEXT_STEPS = """On real data, next:
  embedcyto datasets check --dataset sipakmed --root ~/data/sipakmed
  embedcyto extract --model clip --model quilt --dataset sipakmed --root ~/data/sipakmed
  embedcyto probe --dataset sipakmed --methods linear,knn,simpleshot --episodes 600
  embedcyto lora --model clip --dataset sipakmed --root ~/data/sipakmed --shots 4 --seed 1
  embedcyto report
The study's experiments: python -m pipelines.exp1_linear --data-root ~/data (docs/reproduce.md)."""


def _usable_shots(dataset) -> tuple[int, ...]:
    """The demo's shots that every class's training images allow."""
    from collections import Counter

    counts = Counter(r.label for r in dataset.records if r.split == "train")
    fewest = min(counts.get(i, 0) for i in range(len(dataset.classes)))
    return tuple(k for k in SHOTS if k <= fewest)


def _extract(dataset, split_dir, store: Path) -> None:
    from embedcyto.extract import ExtractConfig, extract_features

    config = ExtractConfig(device="cpu", num_workers=0, progress=False)
    for model in MODELS:
        result = extract_features(dataset, model, store_dir=store, split_dir=split_dir,
                                  random_init=True, config=config)
        state = "cache hit" if result.cache_hit else f"{result.computed} images"
        click.echo(f"  extract {model}: {state} in {result.seconds:.1f} s")


def _lora(dataset, split_dir, runs: Path, shots: tuple[int, ...]) -> None:
    from embedcyto.lora.config import LoraRunConfig
    from embedcyto.lora.train import train_lora

    for model in MODELS:
        for k in shots:
            for seed in LORA_SEEDS:
                config = LoraRunConfig(model=model, dataset=dataset.name, shots=k, seed=seed,
                                       device="cpu", num_workers=0, **LORA_STEPS)
                train_lora(dataset, config, runs_dir=runs, split_dir=split_dir,
                           random_init=True)
        click.echo(f"  lora {model}: shots {', '.join(map(str, shots))} x seeds "
                   f"{', '.join(map(str, LORA_SEEDS))}")


def _run(out: Path, per_class: int, seed: int) -> None:
    from embedcyto.cli._common import open_for_store
    from embedcyto.cli.report import summary_lines
    from embedcyto.datasets.fixtures import make_fixture
    from embedcyto.probes.runner import ProbeGridConfig, run_probe_grid
    from embedcyto.report import build_report
    from embedcyto.report.render import to_markdown

    root = make_fixture("sipakmed", out / "data" / "sipakmed", per_class=per_class, seed=seed)
    store = out / "cache"
    dataset, split_dir = open_for_store("sipakmed", str(root), store_dir=store, split_seed=seed)
    shots = _usable_shots(dataset)
    if not shots:
        raise click.ClickException("too few generated training images for one shot per class; "
                                   "raise --per-class")
    click.echo(f"1. generated a SIPaKMeD-like dataset: {len(dataset.records)} cells, "
               f"{len(dataset.classes)} classes -> {root}")
    click.echo(f"2. features of {', '.join(MODELS)} (random weights) -> {store}")
    _extract(dataset, split_dir, store)
    click.echo(f"3. probes: linear, kNN, SimpleShot ({EPISODES} episodes, shots "
               f"{', '.join(map(str, shots))}), seeds {', '.join(map(str, SEEDS))}; for "
               "tiny-clip, a vision-language model, also zero-shot from class prompts and LP++ "
               "(text-initialised few-shot)")
    run_probe_grid(ProbeGridConfig(store, ("sipakmed",), tuple(MODELS),
                                   ("linear", "knn", "simpleshot", "zeroshot", "lppp"),
                                   tuple(shots), tuple(SEEDS), EPISODES,
                                   results_dir=out / "results" / "probe"))
    click.echo(f"4. LoRA ({LORA_STEPS['iterations']} steps per run at lr {LORA_STEPS['lr']:g}, "
               "enough for these tiny models; the study's recipe is lr 1e-3, 50 + 50*K steps)")
    _lora(dataset, split_dir, out / "runs", shots)
    click.echo("5. report")
    result = build_report(out / "results" / "probe", out / "runs", out / "report")
    for name in ("table1_accuracy_linear", "fewshot_sipakmed"):
        if name in result.tables:
            click.echo("\n" + to_markdown(result.tables[name]))
    for line in summary_lines(result):
        click.echo(line)


def prepare_folder(out: Path) -> None:
    """Make ``out`` an empty demo folder: new, empty, or an earlier demo's (then emptied).

    Any other existing folder is refused, so a mistyped ``--out`` never deletes a user's files.
    """
    from embedcyto.fsio import atomic_write_text

    if out.exists() and not out.is_dir():
        raise click.BadParameter(f"{out} is a file; choose a folder", param_hint="--out")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise click.BadParameter(
                f"{out} already holds files and is not an embedcyto demo folder; choose a new "
                "or empty folder (or remove it)", param_hint="--out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER, "made by `embedcyto demo`; the next demo run here empties "
                      "this folder\n")


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default=DEFAULT_OUT,
              show_default=True,
              help="Folder for the demo's data, store, results and report (kept). An earlier "
                   "demo's folder is replaced; any other non-empty folder is refused.")
@click.option("--per-class", type=click.IntRange(8, 200), default=20, show_default=True,
              help="Generated cells per class (train, validation and test together).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the generated images and of their split.")
def demo(out, per_class, seed) -> None:
    """Run every stage on a generated dataset with random-weight models (no download).

    Generates a small SIPaKMeD-like dataset, extracts features with tiny-clip and tiny-vit,
    probes them (linear, kNN, few-shot), trains short LoRA runs and writes the report (tables
    and figures) into ./embedcyto-demo/ (or --out). About a minute on a laptop CPU.
    """
    folder = Path(out)
    prepare_folder(folder)
    click.echo(f"embedcyto demo. {WARNING}\n")
    from embedcyto.backbones.runtime import torch_threads

    with torch_threads(1):
        _run(folder, per_class, seed)
    click.echo(f"\nreport: {folder / 'report' / 'report.md'} (figures in "
               f"{folder / 'report' / 'figures'}); all demo files: {folder}")
    click.echo(f"Reminder: {WARNING}\n\n{NEXT_STEPS}")
