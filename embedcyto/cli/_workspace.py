"""How commands find their datasets, models and folders: the workspace, or the command line.

``--dataset`` is always a dataset's name. In a workspace it names one of its datasets (all of
them when omitted); with ``--layout`` and ``--root`` it names images given on the command line
(``--save`` adds them to the workspace).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click


def dataset_options(func):
    """--dataset NAME (repeatable) / --layout / --root / --save."""
    decorators = [
        click.option("--dataset", "datasets", multiple=True, metavar="NAME",
                     help="Dataset name (repeatable; default: every workspace dataset)."),
        click.option("--layout", default=None,
                     help="With --root: how the images are laid out (folder, csv, sipakmed, "
                          "mlcc, bcfc, hicervix); a study dataset's name implies it."),
        click.option("--root", default=None, type=click.Path(),
                     help="Images of a dataset not in the workspace (one --dataset NAME)."),
        click.option("--save", is_flag=True,
                     help="Remember --dataset/--layout/--root in the workspace (created here "
                          "if there is none)."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


@dataclass(frozen=True)
class Job:
    """What a command runs on, resolved once."""

    workspace: object  # Workspace | None
    entries: tuple
    models: tuple[str, ...]
    store: str | None
    weights_dir: str | None

    @property
    def store_dir(self) -> Path:
        """``--store``, else ``$EMBEDCYTO_STORE``, the workspace's, ``./cache`` (resolved when
        needed: the store package imports h5py, and bad arguments are refused before that)."""
        from embedcyto.store import default_store_dir

        return default_store_dir(self.store)


def resolve_job(models, datasets, *, layout=None, root=None, save=False, store=None,
                weights_dir=None, options=(), split_seed=0, ratios=(0.7, 0.1, 0.2),
                need_models=True) -> Job:
    """The datasets, models and folders of a command, from its options and the workspace."""
    from embedcyto.workspace import WORKSPACE_FILE, WorkspaceError, save_workspace
    from embedcyto.workspace.current import current_workspace
    from embedcyto.workspace.datasets import select_entries
    from embedcyto.workspace.study import empty_workspace

    ws = current_workspace()
    entries = select_entries(ws, datasets, layout=layout, root=root, options=options,
                             split_seed=split_seed, ratios=ratios)
    if save:
        if root is None:
            raise click.UsageError("--save remembers a dataset given by --root: add --layout "
                                   "and --root, or drop --save")
        target = ws or empty_workspace(Path.cwd())
        saved = target.with_dataset(entries[0])
        save_workspace(saved, ws.path if ws else Path.cwd() / WORKSPACE_FILE)
        click.echo(f"remembered dataset {entries[0].name} in "
                   f"{ws.path if ws else Path.cwd() / WORKSPACE_FILE}", err=True)
    if not models and need_models:
        if ws is None or not ws.models:
            where = "the workspace has no default models" if ws else "there is no workspace"
            raise WorkspaceError(f"which models? {where}: give --model NAME (see `embedcyto "
                                 "models list`), or add defaults with `embedcyto models add "
                                 "NAME`")
        models = ws.models
    if weights_dir is None and ws is not None and ws.weights_dir:
        weights_dir = str(ws.resolve(ws.weights_dir))
    # An ad-hoc dataset keeps its root as given, but its store still follows the workspace.
    return Job(ws if root is None else None, tuple(entries), tuple(models), store, weights_dir)
