"""From a dataset name to an opened dataset: the workspace entry, or an ad-hoc one.

``--dataset`` always names a dataset. Where its images are and how they are laid out comes
from the workspace (``[datasets.NAME]``) or, for a one-off run, from ``--layout`` and
``--root``. A study dataset's name implies its layout (``--dataset sipakmed --root DIR``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

from embedcyto.workspace.config import DEFAULT_RATIOS, DatasetEntry, Workspace
from embedcyto.workspace.tomlio import WorkspaceError

GENERIC_LAYOUTS = ("folder", "csv")


def entry_root(entry: DatasetEntry, workspace: Workspace | None) -> Path:
    """The entry's root folder, relative paths resolved against the workspace folder."""
    if workspace is not None:
        return workspace.resolve(entry.root)
    return Path(entry.root).expanduser().resolve()


def adhoc_entry(name: str, *, layout: str | None, root: str, options=(), split_seed: int = 0,
                ratios=DEFAULT_RATIOS) -> DatasetEntry:
    """A dataset given on the command line (not in the workspace); the root made absolute."""
    from embedcyto.datasets.registry import KNOWN_DATASETS

    if layout is None:
        if name in GENERIC_LAYOUTS:
            raise WorkspaceError(
                f"a dataset is given by its name now, and {name!r} is a layout: give "
                f"`dataset=NAME`, `layout={name}` and `root={root}` (NAME: what to call it, e.g. "
                f"{Path(root).expanduser().resolve().name!r})")
        if name not in KNOWN_DATASETS:
            close = difflib.get_close_matches(name, KNOWN_DATASETS, n=1)
            hint = f"Did you mean {close[0]}? Otherwise its" if close else "Its"
            raise WorkspaceError(
                f"dataset {name!r} is not a study dataset. {hint} layout must be given: "
                f"`dataset={name}`, `layout=folder` and `root={root}` (layouts: "
                "`embedcyto datasets list`)")
        layout = name
    return DatasetEntry(name=name, layout=layout, root=str(Path(root).expanduser().resolve()),
                        options=tuple(dict(options).items()), split_seed=split_seed,
                        ratios=tuple(ratios))


def select_entries(workspace: Workspace | None, names: Sequence[str] = (), *,
                   layout: str | None = None, root: str | None = None, options=(),
                   split_seed: int = 0, ratios=DEFAULT_RATIOS) -> list[DatasetEntry]:
    """The datasets a command runs on.

    With ``root``: one ad-hoc dataset (``names`` holds its one name). Without: the named
    workspace datasets, or all of them when ``names`` is empty.

    Raises:
        WorkspaceError: no workspace and no ``--root``; an unknown name (the known ones are
            listed); an adapter name used the old way.
    """
    if root is not None:
        if len(names) != 1:
            raise WorkspaceError("a root (`root=`) gives the images of one dataset: use it with "
                                 "exactly one dataset name (`dataset=NAME`, and `layout=`)")
        return [adhoc_entry(names[0], layout=layout, root=root, options=options,
                            split_seed=split_seed, ratios=ratios)]
    if layout is not None:
        raise WorkspaceError("a layout (`layout=`) describes a dataset given by its root: add "
                             "`root=PATH`, or drop the layout to use the workspace's datasets")
    if workspace is None:
        what = f"dataset {names[0]!r}" if names else "which datasets to use"
        raise WorkspaceError(
            f"no workspace here to say {what}: run `embedcyto init` and `embedcyto datasets add "
            "NAME` with `layout=LAYOUT` and `root=PATH`, or give the images directly with "
            "`dataset=NAME`, `layout=LAYOUT` and `root=PATH`")
    if not names:
        if not workspace.datasets:
            raise WorkspaceError(f"the workspace {workspace.path} has no datasets yet: add one "
                                 "with `embedcyto datasets add NAME` and `layout=LAYOUT`, "
                                 "`root=PATH`")
        return list(workspace.datasets)
    out = []
    for name in names:
        if name not in workspace.dataset_names and name in GENERIC_LAYOUTS:
            raise WorkspaceError(
                f"a dataset is given by its name now, and {name!r} is a layout: give "
                f"`dataset=NAME` for a workspace dataset (it has: "
                f"{', '.join(workspace.dataset_names) or 'none yet'}), or `dataset=NAME` with "
                f"`layout={name}` and `root=PATH` for other images")
        out.append(workspace.dataset(name))
    return out


def open_entry(entry: DatasetEntry, workspace: Workspace | None, store_dir, *,
               on_bad_image: str = "skip", verify_size: int | None = None):
    """Open a dataset with its split saved beside its stores (``<store>/<name>/splits.json``),
    by :func:`embedcyto.datasets.for_store.open_for_store`.

    Returns:
        (dataset, split_dir)
    """
    from embedcyto.datasets.for_store import open_for_store

    return open_for_store(entry.layout, entry_root(entry, workspace), store_dir=store_dir,
                          name=entry.name, split_seed=entry.split_seed, ratios=entry.ratios,
                          on_bad_image=on_bad_image, options=dict(entry.options),
                          verify_size=verify_size)
