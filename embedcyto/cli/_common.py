"""Options and parsers shared by several commands (kept here so each command stays thin)."""

from __future__ import annotations

import click


def echo_columns(rows: list[tuple[str, ...]]) -> None:
    """Print rows as aligned columns; the last column (free text) is left unpadded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])


def parse_options(pairs: tuple[str, ...]) -> dict[str, str]:
    """``("csv_file=a.csv", ...)`` → ``{"csv_file": "a.csv"}`` (adapter options)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--option")
        options[key.strip().replace("-", "_")] = value
    return options


def parse_ratios(text: str) -> tuple[float, ...]:
    """``"0.7,0.1,0.2"`` → ``(0.7, 0.1, 0.2)``."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not three numbers like 0.7,0.1,0.2",
                                 param_hint="--ratios") from None


def split_options(func):
    """--seed / --ratios / --on-bad-image / -o: how a dataset root is read and split."""
    decorators = [
        click.option("--split-seed", type=int, default=0, show_default=True,
                     help="Seed of a generated split (datasets without an official split)."),
        click.option("--ratios", default="0.7,0.1,0.2", show_default=True,
                     help="Train,val,test fractions of a generated split."),
        click.option("--on-bad-image", type=click.Choice(["skip", "error"]), default="skip",
                     show_default=True,
                     help="skip: check every image first and leave unreadable ones out "
                          "(listed); error: stop at the first."),
        click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
                     help="Adapter option, e.g. -o csv_file=labels.csv."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def weights_options(func):
    """--weights / --weights-dir / --random-weights: where a backbone's weights come from."""
    decorators = [
        click.option("--weights", type=click.Path(), default=None,
                     help="Weights file or folder (one --model only)."),
        click.option("--weights-dir", type=click.Path(file_okay=False), default=None,
                     help="Local weights folder holding <model>/<file> "
                          "(default: $EMBEDCYTO_WEIGHTS)."),
        click.option("--random-weights", is_flag=True,
                     help="Real architecture, random weights (benchmarks and smoke runs only)."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def runtime_options(func):
    """--device / --precision / --workers: where and how the backbone runs."""
    decorators = [
        click.option("--device", default="auto", show_default=True,
                     help="auto, cpu, cuda or cuda:N."),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
                     default="auto", show_default=True,
                     help="Backbone weights precision (auto: bf16 on CUDA and on CPUs with "
                          "bf16 matrix units, else fp32)."),
        click.option("--workers", type=int, default=None,
                     help="Image decoding processes (default: min(4, CPUs - 1))."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def store_option(func):
    return click.option("--store", type=click.Path(file_okay=False), default=None,
                        help="Store folder (default: $EMBEDCYTO_STORE or ./cache).")(func)


def open_for_store(adapter: str, root: str, *, store_dir, name=None, split_seed=0,
                   ratios="0.7,0.1,0.2", on_bad_image="skip", options=(), verify_size=None):
    """Open a dataset with its split saved beside its stores (``<store>/<name>/splits.json``).

    With ``on_bad_image="skip"`` every image is checked first (large JPEGs decoded at
    ``verify_size``, as extraction will) and unreadable ones are left out; with "error" nothing
    is checked up front.

    Returns:
        (dataset, split_dir)
    """
    from pathlib import Path

    from embedcyto.datasets import open_dataset
    from embedcyto.datasets.registry import KNOWN_DATASETS

    if name is None:
        name = adapter if adapter in KNOWN_DATASETS else Path(root).expanduser().resolve().name
    split_dir = Path(store_dir) / name
    dataset = open_dataset(adapter, root, name=name, split_dir=split_dir, seed=split_seed,
                           ratios=parse_ratios(ratios), on_bad_image=on_bad_image,
                           verify_images=on_bad_image == "skip",
                           verify_size=verify_size, **parse_options(options))
    return dataset, split_dir
