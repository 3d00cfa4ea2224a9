"""The user's workspace file: datasets by name, folders, default models and LoRA plans."""

from embedcyto.workspace.config import (
    WORKSPACE_ENV,
    WORKSPACE_FILE,
    DatasetEntry,
    LoraPlan,
    Workspace,
    check_name,
    find_workspace,
    load_workspace,
    save_workspace,
)
from embedcyto.workspace.tomlio import WorkspaceError

__all__ = [
    "WORKSPACE_ENV", "WORKSPACE_FILE", "DatasetEntry", "LoraPlan", "Workspace", "WorkspaceError",
    "check_name", "find_workspace", "load_workspace", "save_workspace",
]
