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


def _layout_options(func):
    for decorator in reversed([
        click.option("--split-seed", "--seed", "split_seed", type=int, default=0,
                     show_default=True, help="Seed of a generated split."),
        click.option("--ratios", default="0.7,0.1,0.2", show_default=True,
                     help="Train,val,test fractions of a generated split."),
        click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
                     help="Adapter option, e.g. -o csv_file=labels.csv -o label_column=diagnosis."),
    ]):
        func = decorator(func)
    return func


@datasets.command("check")
@click.option("--dataset", "name", default=None,
              help="Dataset name: a workspace dataset, or (with --root) what to call the images.")
@click.option("--layout", default=None,
              help="Layout of --root (see `embedcyto datasets list`); a study dataset's name "
                   "implies it.")
@click.option("--root", default=None, type=click.Path(), help="The dataset's root folder.")
@click.option("--split-dir", type=click.Path(file_okay=False), default=None,
              help="Folder of splits.json: reused when present, written when absent.")
@click.option("--verify-images/--no-verify-images", default=True, show_default=True,
              help="Decode every image, as extraction will (remembered per --split-dir); "
                   "--no-verify-images reads only the layout.")
@click.option("--on-bad-image", type=click.Choice(["skip", "error"]), default="skip",
              show_default=True, help="Leave unusable images out (reported) or stop at the first.")
@click.option("--strict", is_flag=True, help="Exit non-zero when any problem is reported.")
@_layout_options
def check_command(name, layout, root, split_dir, verify_images, on_bad_image, strict,
                  split_seed, ratios, options) -> None:
    """Count images per class and split, and report what is wrong with a dataset root.

    `--dataset NAME` checks a workspace dataset; `--dataset NAME --layout LAYOUT --root PATH`
    checks any folder.
    """
    from embedcyto.workspace.current import current_workspace
    from embedcyto.workspace.datasets import select_entries

    ws = current_workspace()
    if name is None and root is None:
        raise click.UsageError("name the dataset: --dataset NAME (a workspace dataset), or "
                               "--dataset NAME --layout LAYOUT --root PATH")
    entries = select_entries(ws, [name] if name else [], layout=layout, root=root,
                             options=tuple(_parse_options(options).items()),
                             split_seed=split_seed, ratios=_parse_ratios(ratios))
    _check(entries[0], ws if root is None else None, split_dir, verify_images, on_bad_image,
           strict)


def _check(entry, ws, split_dir, verify_images, on_bad_image, strict) -> None:
    """Print the check of one dataset entry (the messages of `datasets check` and `add`)."""
    from embedcyto.datasets import check_dataset
    from embedcyto.workspace.datasets import entry_root

    report = check_dataset(entry.layout, entry_root(entry, ws), name=entry.name,
                           split_dir=split_dir, seed=entry.split_seed, ratios=entry.ratios,
                           verify_images=verify_images, on_bad_image=on_bad_image,
                           **dict(entry.options))
    from embedcyto.cli.main import cli_wording

    for line in report.lines():
        click.echo(cli_wording(line, click.get_current_context().command))
    if strict and (report.problems or report.skipped):
        raise click.ClickException(f"{len(report.problems)} problem(s) found (--strict)")


def _as_written(root: str, ws) -> str:
    """The root as the workspace file should hold it: relative to the workspace folder when
    inside it (so the folder can be moved), else absolute."""
    from pathlib import Path

    path = Path(root).expanduser().resolve()
    try:
        return path.relative_to(ws.base).as_posix()
    except ValueError:
        return str(path)


@datasets.command("add")
@click.argument("name")
@click.option("--layout", required=True,
              help="How the root is laid out (see `embedcyto datasets list`).")
@click.option("--root", required=True, type=click.Path(), help="The dataset's root folder.")
@click.option("--verify-images/--no-verify-images", default=True, show_default=True,
              help="Decode every image now, as extraction will.")
@click.option("--replace", is_flag=True, help="Replace a workspace dataset of the same name.")
@click.option("--prompts", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON file of class phrases and prompt templates for this dataset (text "
                   "probes, `embedcyto lora --head text`; docs/text.md).")
@_layout_options
def add_command(name, layout, root, verify_images, replace, prompts, split_seed, ratios,
                options) -> None:
    """Check a dataset root (as `datasets check` does), then add it to the workspace as NAME."""
    from embedcyto.workspace import DatasetEntry, save_workspace
    from embedcyto.workspace.current import current_workspace

    ws = current_workspace(required=True)
    if name in ws.dataset_names and not replace:
        ws.with_dataset(DatasetEntry(name=name, layout=layout, root=root))  # says what to do
    entry = DatasetEntry(name=name, layout=layout, root=_as_written(root, ws),
                         options=tuple(_parse_options(options).items()), split_seed=split_seed,
                         ratios=_parse_ratios(ratios),
                         prompts=None if prompts is None else _as_written(prompts, ws))
    _check(entry, ws, None, verify_images, "skip", False)
    save_workspace(ws.with_dataset(entry, replace_existing=replace))
    click.echo(f"added dataset {name} ({layout}, {entry.root}) to {ws.path}")


@datasets.command("remove")
@click.argument("name")
def remove_command(name) -> None:
    """Remove dataset NAME from the workspace (its images, stores and results stay)."""
    from embedcyto.workspace import save_workspace
    from embedcyto.workspace.current import current_workspace

    ws = current_workspace(required=True)
    save_workspace(ws.without_dataset(name))
    click.echo(f"removed dataset {name} from {ws.path} (its stores in "
               f"{ws.folder('store') / name} were left as they are)")
