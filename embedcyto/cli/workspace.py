"""``embedcyto init`` and ``embedcyto status``: create a workspace, see where it stands."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("init")
@click.argument("folder", required=False, type=click.Path(file_okay=False), default=".")
@click.option("--study", is_flag=True,
              help="The study's workspace: its four datasets (roots DATA_ROOT/<name>), five "
                   "models and two LoRA plans (few-shot, HiCervix fractions).")
@click.option("--data-root", default="data", show_default=True,
              help="With --study: the folder holding bcfc/ mlcc/ sipakmed/ hicervix/.")
@click.option("--force", is_flag=True, help="Replace an existing embedcyto.toml.")
def init(folder, study, data_root, force) -> None:
    """Write embedcyto.toml in FOLDER (default: here): empty, or the study's with --study.

    Then add datasets with `embedcyto datasets add NAME --layout LAYOUT --root PATH` and
    models with `embedcyto models add NAME`; or edit the file (docs/workspace.md).
    """
    from embedcyto.workspace import WORKSPACE_FILE, WorkspaceError, save_workspace
    from embedcyto.workspace.study import empty_workspace, study_workspace

    base = Path(folder)
    target = base / WORKSPACE_FILE
    if target.exists() and not force:
        raise WorkspaceError(f"{target} already exists; edit it, or replace it with "
                             "`embedcyto init --force`")
    base.mkdir(parents=True, exist_ok=True)
    ws = study_workspace(base, data_root) if study else empty_workspace(base)
    save_workspace(ws, target)
    click.echo(f"wrote {target}")
    if study:
        click.echo(f"datasets {', '.join(ws.dataset_names)} expected under {data_root}/ "
                   "(docs/reproduce.md says where to get them); models "
                   f"{', '.join(ws.models)}; LoRA plans {', '.join(p.name for p in ws.lora)}")
    else:
        click.echo("next: `embedcyto datasets add NAME --layout LAYOUT --root PATH` and "
                   "`embedcyto models add MODEL`")


@click.command("status")
@click.option("--model", "models", multiple=True,
              help="Show these models (default: the workspace's, and any with a store or a "
                   "planned LoRA run).")
@click.option("--weights-dir", type=click.Path(file_okay=False), default=None,
              help="Local weights folder (default: the workspace's weights_dir, else "
                   "$EMBEDCYTO_WEIGHTS).")
def status(models, weights_dir) -> None:
    """Where the study stands: per dataset and model, the store (complete, partial k/N,
    missing, stale, damaged), probe rows, LoRA runs done/planned; then missing weights."""
    from embedcyto.workspace.current import current_workspace
    from embedcyto.cli.main import cli_wording
    from embedcyto.workspace.status import format_status, workspace_status

    ws = current_workspace(required=True)
    click.echo(f"workspace {ws.path}")
    if not ws.datasets:
        click.echo("no datasets yet: `embedcyto datasets add NAME --layout LAYOUT --root PATH`")
        return
    result = workspace_status(ws, models or None, weights_dir=weights_dir)
    for line in format_status(result):
        click.echo(cli_wording(line, click.get_current_context().command))
