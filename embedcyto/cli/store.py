"""``embedcyto store``: list, describe, verify, export feature stores and merge shards."""

from __future__ import annotations

import json
from pathlib import Path

import click

from embedcyto.cli._common import echo_columns, store_option

_store_option = store_option(dest="store_dir")


def _target_options(func):
    """PATH argument or --dataset/--model (+ --store) naming one store."""
    func = _store_option(func)
    func = click.option("--model", default=None, help="Model name (with --dataset).")(func)
    func = click.option("--dataset", default=None, help="Dataset name (with --model).")(func)
    return click.argument("path", required=False, type=click.Path(path_type=Path))(func)


def _resolve(path, dataset, model, store_dir) -> Path:
    from embedcyto.store import default_store_dir, resolve_store_file

    if path is not None:
        return resolve_store_file(path, dataset, model)
    return resolve_store_file(default_store_dir(store_dir), dataset, model)


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


@click.group()
def store() -> None:
    """Inspect, verify, export and merge feature stores (one HDF5 file per dataset and model)."""


def _wording(text: str) -> str:
    """A library text with its parameter suggestions as flags (of the command it names)."""
    from embedcyto.cli.main import cli_wording

    return cli_wording(text, click.get_current_context().command)


@store.command("ls")
@_store_option
def ls(store_dir: Path | None) -> None:
    """List the stores and interrupted extractions in the store folder."""
    from embedcyto.store import default_store_dir, list_stores

    folder = default_store_dir(store_dir)
    infos = list_stores(folder)
    if not infos:
        click.echo(f"no feature stores in {folder}")
        return
    rows = [("DATASET", "MODEL", "ROWS", "DIM", "DTYPE", "SIZE", "CREATED", "STATUS")]
    for i in infos:
        rows.append(
            (
                i.dataset,
                i.model,
                "" if i.rows is None else str(i.rows),
                "" if i.dim is None else str(i.dim),
                i.dtype or "",
                _human_size(i.size_bytes),
                i.created_at or "",
                _wording(i.status),
            )
        )
    echo_columns(rows)


@store.command("info")
@_target_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(path, dataset, model, store_dir, as_json: bool) -> None:
    """Describe one store: shapes, state, and how its features were made.

    Name it by PATH (a .h5 file) or by --dataset and --model in the store folder.
    """
    from embedcyto.store import store_info

    data = store_info(_resolve(path, dataset, model, store_dir))
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    provenance = data.pop("provenance", {})
    arrays = data.pop("arrays", {})
    for key, value in data.items():
        click.echo(f"{key}: {value}")
    if arrays:
        click.echo("arrays:")
        for name, desc in arrays.items():
            click.echo(f"  {name}: {desc}")
    click.echo("provenance:")
    for key in sorted(provenance):
        value = provenance[key]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        click.echo(f"  {key}: {text}")


@store.command("verify")
@_target_options
def verify(path, dataset, model, store_dir) -> None:
    """Check stores in full: checksums, digests, shapes and finite values.

    Checks one store (PATH, or --dataset and --model) or, with neither, every store in the
    folder. Exits with status 1 when any store is damaged, naming each one and the fix.
    """
    from embedcyto.errors import StoreError
    from embedcyto.store import default_store_dir, list_stores, verify_store

    if path is None and dataset is None and model is None:
        targets = [i.path for i in list_stores(default_store_dir(store_dir))
                   if i.state in ("complete", "damaged")]
        if not targets:
            click.echo(f"no feature stores in {default_store_dir(store_dir)}")
            return
    else:
        targets = [_resolve(path, dataset, model, store_dir)]
    failed = 0
    for target in targets:
        try:
            click.echo(f"ok  {_wording(verify_store(target).status)}")
        except StoreError as err:
            failed += 1
            click.echo(f"BAD {_wording(str(err))}")
    if failed:
        raise click.ClickException(f"{failed} of {len(targets)} store(s) failed verification")


@store.command("export")
@_target_options
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output file (with --all: output folder, one <dataset>/<model> file each).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["npz", "csv", "parquet"]),
    default=None,
    help="Output format (default: from --out's extension, else npz; parquet needs pyarrow).",
)
@click.option("--split", default=None, help="Export only this split (train, val or test).")
@click.option("--all", "all_stores", is_flag=True,
              help="Every complete store of the store folder (or of --dataset).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def export(path, dataset, model, store_dir, out: Path, fmt, split, all_stores,
           overwrite: bool) -> None:
    """Export stores to .npz, .csv or .parquet (features and row metadata; no HDF5 needed).

    One store: PATH or --dataset/--model. Every store: --all --out FOLDER.
    """
    from embedcyto.store import default_store_dir, export_store
    from embedcyto.store.bulk import export_all, export_parquet

    if all_stores:
        if path is not None or model is not None or split is not None:
            raise click.UsageError("--all exports whole stores of every model: drop PATH, "
                                   "--model and --split (--dataset narrows it)")
        written = export_all(default_store_dir(store_dir), out, fmt or "npz",
                             datasets=[dataset] if dataset else None, overwrite=overwrite)
        for name, model_name, target in written:
            click.echo(f"{name}/{model_name} -> {target}")
        click.echo(f"wrote {len(written)} file(s) to {out}")
        return
    if fmt is None:
        fmt = {".csv": "csv", ".parquet": "parquet"}.get(out.suffix.lower(), "npz")
    source = _resolve(path, dataset, model, store_dir)
    if fmt == "parquet":
        if split is not None or (out.exists() and not overwrite):
            raise click.UsageError("parquet export writes whole stores to a new file: drop "
                                   "--split, or add --overwrite")
        written = export_parquet(source, out)
    else:
        written = export_store(source, out, format=fmt, split=split, overwrite=overwrite)
    click.echo(f"wrote {written}")


@store.command("import")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dataset", required=True, help="The dataset the features describe (its name).")
@click.option("--model", required=True,
              help="Name for the imported features (not a model card's name), e.g. ext-dino.")
@click.option("--layout", default=None, help="With --root: the dataset's layout.")
@click.option("--root", default=None, type=click.Path(),
              help="The dataset's images, when it is not a workspace dataset.")
@_store_option
@click.option("--force", is_flag=True, help="Replace an imported store made from another file.")
def import_(source: Path, dataset, model, layout, root, store_dir, force) -> None:
    """Import features made elsewhere (SOURCE: .npz or .h5 with X, ids, labels, splits).

    The ids, labels and splits must agree with the dataset and its split file, so the features
    are probed on the same splits and episodes as extracted ones; `embedcyto probe` then treats
    them like any store. Their provenance records that they were imported, and from which file.
    """
    from embedcyto.backbones.cards import list_cards
    from embedcyto.store import default_store_dir
    from embedcyto.store.importer import import_features
    from embedcyto.workspace.current import current_workspace
    from embedcyto.workspace.datasets import open_entry, select_entries

    ws = current_workspace()
    entry = select_entries(ws, [dataset], layout=layout, root=root)[0]
    folder = default_store_dir(store_dir)
    opened, split_dir = open_entry(entry, ws if root is None else None, folder)
    written = import_features(source, opened, model=model, store_dir=folder,
                              split_dir=split_dir, force=force,
                              reserved_names=[c.name for c in list_cards()])
    click.echo(f"imported {source} as {dataset}/{model} -> {written}")


@store.command("merge")
@_target_options
@click.option("--shards", "count", type=click.IntRange(min=1), default=None,
              help="Number of shards, when parts of several runs are present.")
@click.option("--force", is_flag=True, help="Replace an existing store made from other inputs.")
def merge(path, dataset, model, store_dir, count, force: bool) -> None:
    """Join the finished shards of `embedcyto extract --shard I/N` into one store.

    The result equals a single-process extraction (same rows, order, features and identity);
    the shard parts are deleted afterwards. Refuses, naming the shard, when one is missing,
    unfinished or made from other inputs.
    """
    from embedcyto.store.merge import merge_shards

    result = merge_shards(_resolve(path, dataset, model, store_dir), count=count, force=force)
    if result.merged:
        click.echo(f"merged {result.shards} shards into {result.path} ({result.rows} rows)")
    else:
        click.echo(f"{result.path} is already complete ({result.rows} rows); nothing to merge")

