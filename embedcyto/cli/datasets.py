"""``embedcyto datasets``: list the known layouts, check a dataset root before extracting."""

from __future__ import annotations

import click

from embedcyto.cli._common import parse_options as _parse_options
from embedcyto.cli._common import parse_ratios as _parse_ratios


@click.group()
def datasets() -> None:
    """Dataset layouts embedcyto reads, and a check of a dataset root."""


@datasets.command("list")
def list_command() -> None:
    """List the dataset adapters and the folder layout each one expects."""
    from embedcyto.datasets import list_adapters

    for info in list_adapters():
        click.echo(f"{info.name}: {info.description}")
        click.echo(f"    layout: {info.layout}")


@datasets.command("check")
@click.option("--dataset", "adapter", required=True,
              help="Adapter name (see `embedcyto datasets list`).")
@click.option("--root", required=True, type=click.Path(), help="The dataset's root folder.")
@click.option("--name", default=None, help="Dataset name (default: adapter or folder name).")
@click.option("--split-dir", type=click.Path(file_okay=False), default=None,
              help="Folder of splits.json: reused when present, written when absent.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of a generated split.")
@click.option("--ratios", default="0.7,0.1,0.2", show_default=True,
              help="Train,val,test fractions of a generated split.")
@click.option("--verify-images/--no-verify-images", default=True, show_default=True,
              help="Decode every image, as extraction will (remembered per --split-dir); "
                   "--no-verify-images reads only the layout.")
@click.option("--on-bad-image", type=click.Choice(["skip", "error"]), default="skip",
              show_default=True, help="Leave unusable images out (reported) or stop at the first.")
@click.option("--strict", is_flag=True, help="Exit non-zero when any problem is reported.")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Adapter option, e.g. -o csv_file=labels.csv -o label_column=diagnosis.")
def check_command(adapter, root, name, split_dir, seed, ratios, verify_images, on_bad_image,
                  strict, options) -> None:
    """Count images per class and split, and report what is wrong with a dataset root."""
    from embedcyto.datasets import check_dataset

    report = check_dataset(adapter, root, name=name, split_dir=split_dir, seed=seed,
                           ratios=_parse_ratios(ratios), verify_images=verify_images,
                           on_bad_image=on_bad_image, **_parse_options(options))
    for line in report.lines():
        click.echo(line)
    if strict and (report.problems or report.skipped):
        raise click.ClickException(f"{len(report.problems)} problem(s) found (--strict)")
