"""Which workspace a command or library call works in.

``embedcyto --workspace PATH`` sets it for one invocation; otherwise ``$EMBEDCYTO_WORKSPACE``,
otherwise ``embedcyto.toml`` in the working folder or a folder above it. Library readers (the
store folder of :func:`embedcyto.load_features`, the results and runs folders) use the same rule,
so a script run in a workspace folder finds what the command line wrote.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path

from embedcyto.workspace.config import Workspace, find_workspace, load_workspace
from embedcyto.workspace.tomlio import WorkspaceError

_ACTIVE: ContextVar[str | None] = ContextVar("embedcyto_workspace", default=None)


def use_workspace(path: str | os.PathLike | None) -> None:
    """Make ``path`` the workspace of this process (None: back to discovery)."""
    _ACTIVE.set(None if path is None else str(path))


def workspace_path() -> Path | None:
    """The workspace file in use, or None when there is none."""
    return find_workspace(_ACTIVE.get())


def current_workspace(*, required: bool = False) -> Workspace | None:
    """The workspace in use, read and checked; None (or an error when ``required``) if none."""
    path = workspace_path()
    if path is None:
        if required:
            raise WorkspaceError(
                f"no workspace here ({Path.cwd()} and the folders above hold no embedcyto.toml); "
                "name one with `workspace=PATH` (or $EMBEDCYTO_WORKSPACE), or create one with "
                "`embedcyto init`")
        return None
    return load_workspace(path)


def workspace_folder(kind: str) -> Path | None:
    """The workspace's ``store``, ``results``, ``runs`` or ``report`` folder, if in one."""
    ws = current_workspace()
    return None if ws is None else ws.folder(kind)
