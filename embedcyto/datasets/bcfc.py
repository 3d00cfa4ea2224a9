"""Body cavity fluid cytology ("BCFC"): benign vs malignant, Leishman stain, 256x192 images.

Two layouts are in circulation and both are read:

* folder per class: ``benign/`` and ``malignant/`` (any case) directly under the root;
* pre-split: ``train/``, ``val/``, ``test/`` each holding files named ``benign_*`` and
  ``malignant_*`` (any case), or ``benign/`` and ``malignant/`` sub-folders. The split then
  comes from the folders (``official_split=True``).

In the pre-split layout, a file whose name starts with neither prefix is skipped and reported,
as are images and folders lying beside the class folders; folders other than train/ val/ test/
beside the split folders are refused.
"""

from __future__ import annotations

from pathlib import Path

from embedcyto.datasets._common import (
    child_dirs,
    class_folder_records,
    finish,
    list_images,
    loose_images,
    presplit_dirs,
    relative_posix,
    require_root,
    short_list,
    visible_names,
)
from embedcyto.datasets.records import Dataset, Record
from embedcyto.errors import DatasetError

CLASSES = ("benign", "malignant")

LAYOUT = ("either benign/ and malignant/ folders (any case), or train/ val/ test/ folders "
          "holding benign_*.png and malignant_*.png files (or benign/ malignant/ sub-folders)")

DESCRIPTION = "Body cavity fluid cytology, benign vs malignant (folder-per-class or pre-split)"


def _class_folders(folder: Path) -> dict[str, Path]:
    """Class folders under ``folder`` matched without case; empty dict when there are none."""
    found: dict[str, Path] = {}
    for sub in child_dirs(folder):
        cls = sub.name.lower()
        if cls in CLASSES:
            if cls in found:
                raise DatasetError(f"{folder} has two folders for class {cls}: "
                                   f"{found[cls].name}/ and {sub.name}/; merge them")
            found[cls] = sub
    return found


def _from_class_folders(root: Path, parent: Path, folders: dict[str, Path], split: str | None,
                        skipped: list[tuple[str, str]]) -> list[Record]:
    """Records of the class folders under ``parent``; what else lies there is reported."""
    loose_images(root, parent, skipped)
    for other in child_dirs(parent):
        if other not in folders.values():
            skipped.append((relative_posix(root, other), "a folder that is neither benign nor "
                            "malignant; not read"))
    records = []
    for cls, folder in sorted(folders.items()):
        records += class_folder_records(root, folder, CLASSES.index(cls), skipped, split)
    return records


def _from_prefixes(root: Path, folder: Path, split: str,
                   skipped: list[tuple[str, str]]) -> list[Record]:
    records = []
    for path in list_images(folder, root, skipped, recursive=False):
        lower = path.name.lower()
        label = next((i for i, c in enumerate(CLASSES) if lower.startswith(c)), None)
        if label is None:
            skipped.append((relative_posix(root, path),
                            "name starts with neither 'benign' nor 'malignant'; class unknown"))
            continue
        records.append(Record(path=relative_posix(root, path), label=label, split=split))
    return records


def read_bcfc(root, *, name: str = "bcfc") -> Dataset:
    """List BCFC images from either known layout.

    Args:
        root: the folder holding ``benign/``+``malignant/`` or ``train/``+``val/``+``test/``.
        name: dataset name.

    Raises:
        DatasetError: root missing, neither layout found, split folders mixed with other
            folders, an empty class folder, or a symlink resolving outside the root.
    """
    root = require_root(root, LAYOUT)
    folders = _class_folders(root)
    skipped: list[tuple[str, str]] = []
    if folders:
        missing = [c for c in CLASSES if c not in folders]
        if missing:
            raise DatasetError(f"{root}: found {', '.join(f.name for f in folders.values())}/ "
                               f"but no {', '.join(missing)}/ folder; BCFC needs both classes")
        records = _from_class_folders(root, root, folders, None, skipped)
        return finish(name, "bcfc", root, CLASSES, records, skipped)
    splits = presplit_dirs(root)
    if not splits:
        raise DatasetError(f"{root} is not a BCFC root: expected {LAYOUT}; found: "
                           f"{short_list(visible_names(root))}")
    others = [d.name for d in child_dirs(root) if d not in splits.values()]
    if others:
        raise DatasetError(f"{root} mixes split folders ({', '.join(sorted(splits))}) with other "
                           f"folders ({short_list(others)}); move their images into train/ val/ "
                           "test/ or out of the root")
    loose_images(root, root, skipped)
    records = []
    for split, folder in sorted(splits.items()):
        sub = _class_folders(folder)
        if sub:
            records.extend(_from_class_folders(root, folder, sub, split, skipped))
        else:
            records.extend(_from_prefixes(root, folder, split, skipped))
    if not records:
        raise DatasetError(f"{root}: the split folders {', '.join(sorted(splits))} hold no "
                           "benign_*/malignant_* images; expected " + LAYOUT)
    return finish(name, "bcfc", root, CLASSES, records, skipped, official_split=True)
