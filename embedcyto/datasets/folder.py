"""Generic folder-per-class layout (ImageFolder style), optionally pre-split.

``root/<class>/**/<image>`` or ``root/{train,val,test}/<class>/**/<image>``. Classes are the
class folder names, sorted (so labels do not depend on the file system's listing order); in a
pre-split layout they are the union over the split folders, and the split comes from the
folders (``official_split=True``). Images are found recursively inside a class folder.
Image files lying outside any class folder, broken symlinks and folders named like images are
left out and reported; symlinks resolving outside the root are refused.
"""

from __future__ import annotations

from pathlib import Path

from embedcyto.datasets._common import (
    child_dirs,
    class_folder_records,
    finish,
    loose_images,
    presplit_dirs,
    require_root,
    short_list,
    visible_names,
)
from embedcyto.datasets.records import Dataset
from embedcyto.errors import DatasetError

LAYOUT = ("a folder per class (root/<class>/<image>), optionally under train/ val/ test/ "
          "(root/train/<class>/<image>)")

DESCRIPTION = "Your own images, one folder per class, optionally pre-split into train/val/test"


def _class_dirs(folder: Path) -> dict[str, Path]:
    dirs = {d.name: d for d in child_dirs(folder)}
    if not dirs:
        raise DatasetError(f"{folder} holds no class folders: expected {LAYOUT}; found: "
                           f"{short_list(visible_names(folder))}")
    return dirs


def read_folder(root, *, name: str = "folder") -> Dataset:
    """List images from a folder-per-class layout.

    Args:
        root: the dataset root.
        name: dataset name (names the store folder; give your dataset a name of its own).

    Raises:
        DatasetError: root missing, no class folders, a mix of split and class folders, an
            empty class folder, or a symlink resolving outside the root.
    """
    root = require_root(root, LAYOUT)
    splits = presplit_dirs(root)
    if splits:
        others = [d.name for d in child_dirs(root) if d not in splits.values()]
        if others:
            raise DatasetError(f"{root} mixes split folders ({', '.join(sorted(splits))}) with "
                               f"other folders ({short_list(others)}); put every class folder "
                               "under train/ val/ test/, or use no split folders at all")
        per_split = {s: _class_dirs(folder) for s, folder in splits.items()}
    else:
        per_split = {None: _class_dirs(root)}
    classes = tuple(sorted({c for dirs in per_split.values() for c in dirs}))
    records, skipped = [], []
    loose_images(root, root, skipped)
    for split, dirs in per_split.items():
        if split is not None:
            loose_images(root, splits[split], skipped)
        for cls, folder in dirs.items():
            records += class_folder_records(root, folder, classes.index(cls), skipped, split)
    return finish(name, "folder", root, classes, records, skipped,
                  official_split=bool(splits))
