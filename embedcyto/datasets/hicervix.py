"""HiCervix (Cai et al., IEEE TMI 2024): 40,229 cervical cells with a 3-level label tree.

Layout: ``train/ val/ test/`` folders of UUID-named JPEGs plus ``train.csv``, ``val.csv`` and
``test.csv`` in the root (or in ``csv_dir``). The splits are the official ones. Label logic
(levels, label spaces, the study's 25-class variant) lives in
:mod:`embedcyto.datasets.hicervix_labels`; this module ties the CSV rows to image files.

Every image name comes from a CSV, i.e. from outside: names that would leave the root
(``..``, absolute paths, symlinks resolving outside) are refused with a DatasetError whatever
``on_bad_image`` says. CSV rows whose image file is missing are a reported skip with
``on_bad_image="skip"`` (the default; they appear in ``Dataset.skipped`` and in
``embedcyto datasets check``) and an error with ``on_bad_image="error"``. When no listed
image exists at all, the root is wrong and that is always an error.
"""

from __future__ import annotations

from pathlib import Path

from embedcyto.datasets._common import file_problem, require_root, safe_join, short_list
from embedcyto.datasets.hicervix_labels import (
    CLASSES,
    LABEL_SPACES,
    LEVEL_MAPS,
    LEVEL_NAMES,
    STUDY25,
    bundled_csv_dir,
    hicervix_study25_labels,
    long_names,
    read_hicervix_labels,
)
from embedcyto.datasets.records import Dataset
from embedcyto.errors import DatasetError

__all__ = [
    "CLASSES", "LABEL_SPACES", "LEVEL_MAPS", "LEVEL_NAMES", "STUDY25", "bundled_csv_dir",
    "hicervix_study25_labels", "long_names", "read_hicervix", "read_hicervix_labels",
]

LAYOUT = ("train/ val/ test/ folders of .jpg cells and train.csv val.csv test.csv (columns "
          "image_name,class_name,class_id,level_1,level_2,level_3) in the root")

DESCRIPTION = ("HiCervix cervical cells, 26 annotated classes, 3-level hierarchy "
               "(4/21/23 classes), official splits from its CSVs")


def read_hicervix(root, *, name: str = "hicervix", csv_dir=None,
                  on_bad_image: str = "skip") -> Dataset:
    """Read HiCervix's labels and tie each row to its image under ``root/<split>/``.

    Args:
        root: folder holding ``train/ val/ test/`` (and, by default, the three CSVs).
        name: dataset name.
        csv_dir: folder of the CSVs when they are not in ``root``.
        on_bad_image: "skip" reports rows whose image is missing, "error" raises on them.

    Raises:
        DatasetError: root or CSVs missing, malformed CSV (file and line named), an image name
            escaping the root, no listed image present, or missing images with "error".
    """
    root = require_root(root, LAYOUT)
    csv_dir = Path(csv_dir) if csv_dir is not None else root
    if not (csv_dir / "train.csv").is_file() and csv_dir == root:
        hint = f"; the label CSVs also ship with embedcyto: csv_dir={bundled_csv_dir()}"
        found = short_list(sorted(p.name for p in root.iterdir()))
        raise DatasetError(f"{root} is not a HiCervix root: expected {LAYOUT}; found: {found}"
                           f"{hint}")
    dataset = read_hicervix_labels(csv_dir, root=root, name=name)
    kept, missing, reasons = [], [], []
    for rec in dataset.records:
        path = safe_join(root, rec.path, f"{csv_dir / (rec.split + '.csv')}, image {rec.path}")
        problem = file_problem(path)
        if problem is None:
            kept.append(rec)
        else:
            missing.append(rec.path)
            reasons.append(f"listed in the CSV but {problem}")
    if missing and not kept:
        raise DatasetError(f"none of the {len(missing)} images listed in the CSVs exists under "
                           f"{root} (e.g. {missing[0]}); the root (`root=PATH`) must be the "
                           "folder holding train/ val/ test/")
    if missing and on_bad_image == "error":
        raise DatasetError(f"{len(missing)} image(s) listed in the CSVs are missing under {root}:"
                           f" {short_list(missing, 5)}; restore them or use on_bad_image='skip' "
                           "to leave them out (the official test subsets then shrink)")
    dataset.records = kept
    dataset.skipped = sorted(zip(missing, reasons))
    return dataset
