"""SIPaKMeD (Plissiti et al., ICIP 2018): 5 classes of single-cell crops from Pap smears.

Only the single-cell crops ``im_<Class>/CROPPED/NNN_MM.bmp`` are images of the dataset. The
cluster images ``im_<Class>/NNN.bmp`` and the boundary files ``*.dat`` beside them are ignored
(a recursive glob would mix 966 cluster images into the 4,049 crops). Unpacking the archives
often doubles the class folder (``im_X/im_X/CROPPED``); both forms are accepted.

Crop ``NNN_MM`` is cell ``MM`` cut from cluster image ``NNN``: cells of one cluster share the
group ``<Class>/NNN`` so that a split never puts neighbours of one slide region on both sides.
"""

from __future__ import annotations

import re
from pathlib import Path

from embedcyto.datasets._common import (
    child_dirs,
    finish,
    list_images,
    relative_posix,
    require_root,
    short_list,
    visible_names,
)
from embedcyto.datasets.records import Dataset, Record
from embedcyto.errors import DatasetError

#: The five classes, in label order (label = class folder name without ``im_``).
CLASSES = ("Dyskeratotic", "Koilocytotic", "Metaplastic", "Parabasal",
           "Superficial-Intermediate")

#: Clinical grouping of the classes, for users who report normal / abnormal / benign.
CATEGORIES = {
    "Superficial-Intermediate": "normal",
    "Parabasal": "normal",
    "Koilocytotic": "abnormal",
    "Dyskeratotic": "abnormal",
    "Metaplastic": "benign",
}

FOLDERS = tuple(f"im_{c}" for c in CLASSES)

LAYOUT = ("one folder per class: " + ", ".join(FOLDERS) + "; each holding CROPPED/NNN_MM.bmp "
          "single-cell crops (im_X/im_X/CROPPED/ also accepted); cluster images NNN.bmp and "
          "*.dat files are ignored")

DESCRIPTION = "SIPaKMeD Pap smear single-cell crops, 5 classes, grouped by cluster image"

_CROP_NAME = re.compile(r"^(\d+)_(\d+)$")


def _cropped_dir(class_dir: Path) -> Path:
    """``class_dir/CROPPED`` or, for a doubled unpack, ``class_dir/<same name>/CROPPED``."""
    for candidate in (class_dir / "CROPPED", class_dir / class_dir.name / "CROPPED"):
        if candidate.is_dir():
            return candidate
    raise DatasetError(
        f"{class_dir} has no CROPPED/ folder (looked at {class_dir.name}/CROPPED and "
        f"{class_dir.name}/{class_dir.name}/CROPPED; found: {short_list(visible_names(class_dir))}"
        "); SIPaKMeD single cells live in CROPPED/NNN_MM.bmp: unpack the class archive again")


def _class_dirs(root: Path) -> dict[str, Path]:
    """Map each class to its folder, or say which folders were expected and which were found."""
    present = {d.name: d for d in child_dirs(root)}
    missing = [f for f in FOLDERS if f not in present]
    if missing:
        partly = f"missing {', '.join(missing)}; " if len(missing) < len(FOLDERS) else ""
        below = [d.name for d in present.values() if (d / FOLDERS[0]).is_dir()]
        hint = (f"; did you mean `root={root / below[0]}`?" if below else
                ". The root (`root=PATH`) must be the folder that holds the five im_* class "
                "folders")
        raise DatasetError(
            f"{root} is not a SIPaKMeD root: expected folders {', '.join(FOLDERS)}; "
            f"{partly}found: {short_list(visible_names(root))}{hint}")
    return {c: present[f"im_{c}"] for c in CLASSES}


def read_sipakmed(root, *, name: str = "sipakmed") -> Dataset:
    """List SIPaKMeD's single-cell crops with labels and cluster groups.

    Args:
        root: folder holding the five ``im_<Class>`` folders.
        name: dataset name (names the store folder).

    Returns:
        A Dataset without splits (SIPaKMeD has no official split). Crops whose name is not
        ``NNN_MM.bmp`` are skipped and reported, since their cluster (and so their group)
        is unknown and they could leak across splits.

    Raises:
        DatasetError: root missing, class folders missing, no CROPPED folder, or no crops.
    """
    root = require_root(root, LAYOUT)
    records, skipped = [], []
    for label, (cls, class_dir) in enumerate(_class_dirs(root).items()):
        cropped = _cropped_dir(class_dir)
        crops = list_images(cropped, root, skipped, recursive=False, extensions=(".bmp",))
        if not crops:
            raise DatasetError(f"{cropped} contains no .bmp crops; SIPaKMeD class {cls} is empty."
                               " Unpack its archive again or check the root")
        for path in crops:
            rel = relative_posix(root, path)
            match = _CROP_NAME.match(path.stem)
            if match is None:
                skipped.append((rel, "crop name is not NNN_MM.bmp, so its cluster is unknown "
                                     "and it could leak across splits"))
                continue
            records.append(Record(path=rel, label=label, group=f"{cls}/{int(match.group(1)):03d}"))
    return finish(name, "sipakmed", root, CLASSES, records, skipped)
