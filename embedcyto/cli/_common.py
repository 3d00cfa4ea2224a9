"""Options and parsers shared by several commands, each defined once (as rasterio's
``rio/options.py`` does).

An option used by more than one command — its name, type, default and help — is written here and
only here; a command applies it as a decorator. Defaults that are library behaviour (folders,
the store folder's environment variable) are read from the library, so the help cannot drift.
"""

from __future__ import annotations

from pathlib import Path

import click

from embedcyto.datasets.for_store import open_for_store  # noqa: F401  (commands import it here)
from embedcyto.folders import DEFAULT_REPORT_DIR, DEFAULT_RESULTS_DIR, DEFAULT_RUNS_DIR


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


def comma_list(kind=int, *, minimum=None):
    """A click callback parsing ``"1,2,4"`` into a tuple of ``kind`` (at least one value, each
    at least ``minimum`` when given); None stays None (the option was not given)."""
    noun = "integers" if kind is int else "numbers"

    def parse(ctx, param, value: str | None):
        if value is None:
            return None
        try:
            out = tuple(kind(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {noun}, got {value!r}") from None
        if not out:
            raise click.BadParameter("give at least one value")
        if minimum is not None and min(out) < minimum:
            raise click.BadParameter(f"every value must be at least {minimum}, got {value!r}")
        return out
    return parse


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
                     callback=lambda ctx, param, value: parse_ratios(value),
                     help="Train,val,test fractions of a generated split."),
        click.option("--on-bad-image", type=click.Choice(["skip", "error"]), default="skip",
                     show_default=True,
                     help="skip: check every image first and leave unreadable ones out "
                          "(listed); error: stop at the first."),
        click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
                     callback=lambda ctx, param, value: parse_options(value),
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


STORE_HELP = "Store folder (default: $EMBEDCYTO_STORE, else the workspace's, else ./cache)."


def store_option(func=None, *, dest: str = "store"):
    """--store: the folder of feature stores (``dest`` names the function parameter)."""
    decorator = click.option("--store", dest, type=click.Path(file_okay=False, path_type=Path),
                             default=None, help=STORE_HELP)
    return decorator if func is None else decorator(func)


def _folder_option(flag: str, dest: str, default: Path, help_text: str):
    return click.option(flag, dest, type=click.Path(file_okay=False, path_type=Path),
                        default=None,
                        help=f"{help_text} (default: the workspace's, else ./{default.as_posix()}).")


#: --results: the probe results folder (<dataset>.jsonl files).
results_option = _folder_option("--results", "results_dir", DEFAULT_RESULTS_DIR,
                                "Folder of probe results (<dataset>.jsonl)")
#: --runs: the root of the LoRA run folders.
runs_option = _folder_option("--runs", "runs_dir", DEFAULT_RUNS_DIR,
                             "Root of the LoRA run folders (holding lora/)")
#: --out of `embedcyto report`.
report_out_option = _folder_option("--out", "out_dir", DEFAULT_REPORT_DIR,
                                   "Where report.md, tables/ and figures/ go")
