"""Mendeley liquid-based cytology cervical cancer images ("MLCC", Hussain et al. 2019).

Four class folders with long names containing spaces; file names contain spaces and
parentheses (``NL_16_ (4).jpg``), which is why paths are always handled as Path objects and
never split on whitespace. The images are large JPEGs (2048x1536): pass ``target_size`` to
:func:`embedcyto.datasets.read_image` so the decoder downsamples while decoding.
"""

from __future__ import annotations

from embedcyto.datasets._common import (
    child_dirs,
    class_folder_records,
    finish,
    loose_images,
    require_root,
    short_list,
    visible_names,
)
from embedcyto.datasets.records import Dataset
from embedcyto.errors import DatasetError

#: Short labels, in label order.
CLASSES = ("HSIL", "LSIL", "NILM", "SCC")

#: The exact folder name of each class in the download.
FOLDERS = {
    "HSIL": "High squamous intra-epithelial lesion",
    "LSIL": "Low squamous intra-epithelial lesion",
    "NILM": "Negative for Intraepithelial malignancy",
    "SCC": "Squamous cell carcinoma",
}

LAYOUT = ("one folder per class with the download's names: "
          + ", ".join(f"'{FOLDERS[c]}'" for c in CLASSES) + "; JPEG images inside")

DESCRIPTION = "Mendeley LBC cervical cytology, 4 classes (HSIL, LSIL, NILM, SCC), large JPEGs"


def _normalise(folder_name: str) -> str:
    """Folder names compared without case and with runs of blanks collapsed."""
    return " ".join(folder_name.lower().split())


def read_mlcc(root, *, name: str = "mlcc") -> Dataset:
    """List the MLCC images under their four class folders.

    Args:
        root: folder holding the four class folders (names matched ignoring case and repeated
            blanks).
        name: dataset name.

    Returns:
        A Dataset without splits (MLCC has no official split).

    Raises:
        DatasetError: root missing, a class folder missing, or a class folder without images.
    """
    root = require_root(root, LAYOUT)
    present = {_normalise(d.name): d for d in child_dirs(root)}
    missing = [FOLDERS[c] for c in CLASSES if _normalise(FOLDERS[c]) not in present]
    if missing:
        raise DatasetError(
            f"{root} is not an MLCC root: expected folders "
            + ", ".join(f"'{FOLDERS[c]}'" for c in CLASSES)
            + f"; missing {', '.join(repr(m) for m in missing)}; found: "
            f"{short_list(visible_names(root))}")
    records, skipped = [], []
    loose_images(root, root, skipped)
    for label, cls in enumerate(CLASSES):
        records += class_folder_records(root, present[_normalise(FOLDERS[cls])], label, skipped)
    return finish(name, "mlcc", root, CLASSES, records, skipped)
