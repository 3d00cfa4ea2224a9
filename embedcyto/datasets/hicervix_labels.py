"""HiCervix's labels: the 26 annotated classes, the three-level tree, and the CSV parser.

Kept apart from the file checks in :mod:`embedcyto.datasets.hicervix` so that the label logic
can be read (and tested) from the CSVs alone, without the 40,229 images.

Label spaces (classes in the order of their first appearance by ``class_id``):

* primary: the 26 ``class_name`` values (``Dataset.classes``, what ``Record.label`` indexes);
* ``level_1`` (4), ``level_2`` (21), ``level_3`` (23): the official evaluation levels.
  ``level_3`` is the finest label of a cell: its ``level_3`` cell if set, else its level-2
  name when that level-2 class has no children (e.g. ``Normal``), else none: cells labelled
  only ``AGC``, ``AGC-NOS`` or ``ADC`` have no level-3 label, cells labelled ``AGC`` no
  level-2 label. This gives HierSwin's official test subsets of 8,051 / 7,644 / 6,946 cells.
* ``level_3_study25``: the variant used by the Dausort et al. code: the union of level-2 and
  level-3 names (25 classes; label = ``level_3`` cell if set else ``level_2``; cells without a
  level-2 label excluded, i.e. 7,644 test cells). Not an official level, so it is not in
  ``Dataset.level_names``; get its per-row labels with :func:`hicervix_study25_labels`.
"""

from __future__ import annotations

import csv
import io
from importlib import resources
from pathlib import Path, PurePosixPath

import numpy as np

from embedcyto.datasets._common import read_utf8
from embedcyto.datasets.generated import is_generated
from embedcyto.datasets.records import SPLITS, Dataset, LabelSpace, Record
from embedcyto.errors import DatasetError

COLUMNS = ("image_name", "class_name", "class_id", "level_1", "level_2", "level_3")

#: (class_name, class_id, level_1, level_2, level_3) for the 26 annotated classes, exactly as
#: in HiCervix's CSVs ("" where the annotation stops above that level).
CLASS_TABLE = (
    ("Normal", 0, "negative", "Normal", ""),
    ("ECC", 1, "negative", "ECC", ""),
    ("RPC", 2, "negative", "RPC", ""),
    ("MPC", 3, "negative", "MPC", ""),
    ("PG", 4, "negative", "PG", ""),
    ("Atrophy", 5, "negative", "Atrophy", ""),
    ("EMC", 6, "negative", "EMC", ""),
    ("HCG", 7, "negative", "HCG", ""),
    ("ASC-US", 8, "ASC", "ASC-US", ""),
    ("LSIL", 9, "ASC", "LSIL", ""),
    ("ASC-H", 10, "ASC", "ASC-H", ""),
    ("HSIL", 11, "ASC", "HSIL", ""),
    ("SCC", 12, "ASC", "SCC", ""),
    ("AGC", 13, "AGC", "", ""),
    ("AGC-NOS", 14, "AGC", "AGC-NOS", ""),
    ("AGC-FN", 15, "AGC", "AGC-FN", ""),
    ("ADC", 16, "AGC", "ADC", ""),
    ("AGC-ECC-NOS", 17, "AGC", "AGC-NOS", "AGC-ECC-NOS"),
    ("AGC-EMC-NOS", 18, "AGC", "AGC-NOS", "AGC-EMC-NOS"),
    ("ADC-ECC", 19, "AGC", "ADC", "ADC-ECC"),
    ("ADC-EMC", 20, "AGC", "ADC", "ADC-EMC"),
    ("FUNGI", 21, "microbe", "FUNGI", ""),
    ("ACTINO", 22, "microbe", "ACTINO", ""),
    ("TRI", 23, "microbe", "TRI", ""),
    ("HSV", 24, "microbe", "HSV", ""),
    ("CC", 25, "microbe", "CC", ""),
)

CLASSES = tuple(row[0] for row in CLASS_TABLE)
LEVEL_NAMES = ("level_1", "level_2", "level_3")
STUDY25 = "level_3_study25"

_PARENTS_WITH_CHILDREN = {row[3] for row in CLASS_TABLE if row[4]}


def _unique(names) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for n in names if n))


def _finest(level_2: str, level_3: str) -> str:
    """Official level-3 name: the level-3 cell, else a childless level-2 class, else none."""
    if level_3:
        return level_3
    return level_2 if level_2 and level_2 not in _PARENTS_WITH_CHILDREN else ""


_PER_CLASS = {
    "level_1": [row[2] for row in CLASS_TABLE],
    "level_2": [row[3] for row in CLASS_TABLE],
    "level_3": [_finest(row[3], row[4]) for row in CLASS_TABLE],
    STUDY25: [row[4] or row[3] for row in CLASS_TABLE],
}
LABEL_SPACES = {key: LabelSpace(key, _unique(names)) for key, names in _PER_CLASS.items()}
LEVEL_MAPS = {key: tuple(LABEL_SPACES[key].classes.index(n) if n else -1 for n in names)
              for key, names in _PER_CLASS.items()}
HIERARCHY = {
    **{row[3]: row[2] for row in CLASS_TABLE if row[3]},
    **{row[4]: row[3] for row in CLASS_TABLE if row[4]},
}


def bundled_csv_dir() -> Path:
    """The folder of HiCervix's label CSVs shipped with embedcyto (labels only, no images)."""
    return Path(str(resources.files("embedcyto.datasets") / "data" / "hicervix"))


def _check_name(name: str, where: str) -> str:
    """Refuse image names that could leave the split folder (absolute, ``..``, drive letters)."""
    text = name.strip().replace("\\", "/")
    pure = PurePosixPath(text)
    if not text or pure.is_absolute() or ".." in pure.parts or (len(text) > 1 and text[1] == ":"):
        raise DatasetError(f"{where}: image name {name!r} is empty, absolute or contains '..' and "
                           "would escape the dataset root; fix the CSV")
    return text


def _parse_row(row: dict, where: str) -> int:
    """Validate one CSV row against :data:`CLASS_TABLE`; return its class index."""
    name = row["class_name"].strip()
    if name not in CLASSES:
        raise DatasetError(f"{where}: unknown class_name {name!r}; HiCervix classes are "
                           f"{', '.join(CLASSES)}")
    index = CLASSES.index(name)
    expected = CLASS_TABLE[index]
    try:
        class_id = int(row["class_id"].strip())
    except ValueError:
        raise DatasetError(f"{where}: class_id {row['class_id']!r} is not an integer") from None
    if class_id != expected[1]:
        raise DatasetError(f"{where}: class_id {class_id} does not match class {name} "
                           f"(expected {expected[1]}); the CSV is corrupt or from another release")
    levels = tuple((row[c] or "").strip() for c in COLUMNS[3:])
    if levels != expected[2:]:
        raise DatasetError(f"{where}: levels {levels} disagree with class {name}'s "
                           f"{expected[2:]}; the CSV is corrupt or from another release")
    return index


def _records(reader: csv.DictReader, path: Path, split: str) -> list[Record]:
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DatasetError(f"{path}, line 1: missing column(s) {', '.join(missing)}; "
                           f"HiCervix CSVs have the columns {','.join(COLUMNS)}")
    records, seen, end = [], {}, reader.line_num
    for row in reader:
        line, end = end + 1, reader.line_num  # where the row starts
        where = f"{path}, line {line}"
        if None in row or any(row[c] is None for c in COLUMNS):
            raise DatasetError(f"{where}: wrong number of cells; expected {len(COLUMNS)}")
        name = _check_name(row["image_name"], where)
        if name in seen:
            raise DatasetError(f"{where}: image {name} already listed on line {seen[name]}")
        seen[name] = line
        index = _parse_row(row, where)
        levels = tuple(LEVEL_MAPS[level][index] for level in LEVEL_NAMES)
        records.append(Record(path=f"{split}/{name}", label=index, split=split, levels=levels))
    return records


def _read_split_csv(path: Path, split: str) -> list[Record]:
    if not path.is_file():
        raise DatasetError(f"HiCervix label file {path} not found; expected train.csv, val.csv "
                           "and test.csv beside the train/ val/ test/ folders (or pass csv_dir)")
    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""))
    try:
        records = _records(reader, path, split)
    except csv.Error as err:
        raise DatasetError(f"{path}, line {reader.line_num}: {err}; fix the CSV") from None
    if not records:
        raise DatasetError(f"{path} lists no images")
    return records


def read_hicervix_labels(csv_dir=None, *, root=None, name: str = "hicervix") -> Dataset:
    """Parse HiCervix's ``train.csv``, ``val.csv`` and ``test.csv`` into records; no image access.

    Args:
        csv_dir: folder holding the three CSVs (default: the copy shipped with embedcyto).
        root: the dataset root to record (default: ``csv_dir``); image files are not checked.
        name: dataset name.

    Returns:
        A Dataset with the official splits, ``Record.path = "<split>/<image_name>"``, the
        26-class primary labels, ``levels`` for level_1..3 and every label space.

    Raises:
        DatasetError: a CSV is missing, lacks a column, names an unknown class, has a class_id
            or levels that disagree with the class, a duplicate or escaping image name; the
            message names the file and line.
    """
    csv_dir = Path(csv_dir) if csv_dir is not None else bundled_csv_dir()
    records = [r for split in SPLITS for r in _read_split_csv(csv_dir / f"{split}.csv", split)]
    return Dataset(
        name=name, adapter="hicervix", root=Path(root) if root is not None else csv_dir,
        classes=CLASSES, records=sorted(records, key=lambda r: r.path),
        label_spaces=dict(LABEL_SPACES), level_names=LEVEL_NAMES, hierarchy=dict(HIERARCHY),
        level_maps={k: LEVEL_MAPS[k] for k in LEVEL_NAMES}, official_split=True,
        generated=is_generated(root))


def hicervix_study25_labels(dataset: Dataset) -> np.ndarray:
    """Per-record labels in the study's 25-class ``level_3_study25`` space (-1 = excluded).

    The Dausort et al. code evaluated HiCervix on the union of level-2 and level-3 names; this
    is that variant, offered for reproducing their numbers only. Rows labelled ``AGC`` alone are
    -1 (7,644 of the 8,051 test rows keep a label). Index into
    ``dataset.label_spaces["level_3_study25"].classes``.

    Raises:
        DatasetError: the dataset is not HiCervix.
    """
    if dataset.adapter != "hicervix" or tuple(dataset.classes) != CLASSES:
        raise DatasetError(f"the {STUDY25} labels exist for HiCervix only, not {dataset.name}")
    mapping = np.asarray(LEVEL_MAPS[STUDY25], dtype=np.int64)
    return mapping[np.asarray([r.label for r in dataset.records], dtype=np.int64)]


def long_names(csv_dir=None) -> dict[str, str]:
    """Abbreviation -> English long name, from ``hierarchy_names.csv`` (for report tables)."""
    path = (Path(csv_dir) if csv_dir is not None else bundled_csv_dir()) / "hierarchy_names.csv"
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    return {row[2].strip(): row[1].strip() for row in rows[1:] if len(row) >= 3 and row[2].strip()}
