"""Where stores live: one file per (dataset, model), plus its partial folder and lock file.

Every other module asks this one for a path, so the on-disk layout is decided in one place:

    <store_dir>/<dataset>/<model>.h5           the finished store (published atomically)
    <store_dir>/<dataset>/<model>.h5.partial/  finished batches of an unfinished extraction
    <store_dir>/<dataset>/<model>.h5.lock      the writers' lock file (may stay behind; harmless)
    <store_dir>/<dataset>/<model>.h5.shards/   parts written by ``--shard`` runs (see shards.py)
"""

from __future__ import annotations

import os
from pathlib import Path

from embedcyto.errors import StoreError
from embedcyto.names import name_problem

STORE_SUFFIX = ".h5"
PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
SHARDS_SUFFIX = ".shards"
TMP_MARKER = ".tmp-"  # temporary stores of embedcyto before fsio (cleaned up)
ENV_STORE = "EMBEDCYTO_STORE"
DEFAULT_STORE_DIR = "cache"


def default_store_dir(store: str | os.PathLike | None = None) -> Path:
    """The store folder a command should use.

    Resolution order: the explicit ``store`` argument (a ``--store`` option), else the
    ``EMBEDCYTO_STORE`` environment variable read now (not at import, so tests and long-lived
    processes see changes), else the workspace's ``store`` folder (docs/workspace.md), else
    ``./cache``.
    """
    if store is not None and str(store) != "":
        return Path(store).expanduser()
    env = os.environ.get(ENV_STORE, "").strip()
    if env:
        return Path(env).expanduser()
    from embedcyto.workspace.current import workspace_folder

    return workspace_folder("store") or Path(DEFAULT_STORE_DIR)


def _check_name(kind: str, name: str) -> str:
    """Refuse names that would escape the store folder, make odd file names or break tables."""
    problem = name_problem(name, file_name=True)
    if problem is not None:
        raise StoreError(
            f"{kind} name {name!r} {problem}; choose a plain name such as 'sipakmed' or 'quilt'"
        )
    return name


def store_path(store_dir: str | os.PathLike, dataset_name: str, model: str) -> Path:
    """The finished store file of one (dataset, model): ``store_dir/dataset_name/model.h5``."""
    _check_name("dataset", dataset_name)
    _check_name("model", model)
    return Path(store_dir) / dataset_name / f"{model}{STORE_SUFFIX}"


def partial_dir(path: str | os.PathLike) -> Path:
    """The folder holding finished batches of an unfinished extraction into ``path``."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file writers of ``path`` hold with ``flock`` while they run."""
    path = Path(path)
    return path.with_name(path.name + LOCK_SUFFIX)


def resolve_store_file(
    store: str | os.PathLike | None = None,
    dataset: str | None = None,
    model: str | None = None,
    *,
    store_dir: str | os.PathLike | None = None,
) -> Path:
    """Turn "a store file" or "a store folder + dataset + model" into the store file's path.

    ``store`` may be a ``.h5`` file (then ``dataset``/``model`` are optional) or a store folder
    (then both are required). With ``store=None`` the folder is ``store_dir`` or
    :func:`default_store_dir`.
    """
    if store is not None and store_dir is not None:
        raise StoreError("give either a store path or store_dir, not both")
    if store is not None:
        candidate = Path(store).expanduser()
        looks_like_file = candidate.suffix == STORE_SUFFIX or candidate.is_file()
        if looks_like_file:
            return candidate
        base = candidate
    else:
        base = default_store_dir(store_dir)
    if not dataset or not model:
        raise StoreError(
            f"{base} is a store folder: also give the dataset and the model "
            "(e.g. `dataset=sipakmed` and `model=quilt`), or pass the path of a .h5 store file"
        )
    return store_path(base, dataset, model)
