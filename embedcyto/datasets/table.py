"""Generic CSV layout: one row per image with a path column and a label column.

Optional columns: a split column (``train``/``val``/``test``; then the split is official), a
group column (images of one group never straddle splits) and level columns (a label
hierarchy, coarse to fine). Column names are options; the defaults are ``path``, ``label``,
``split`` and ``group``, and the split and group columns are used only when present (a column
name you pass explicitly must exist). Classes are the label values sorted, unless ``classes``
gives their order. Paths are relative to the dataset root and may not leave it. Rows whose
image is missing are handled like HiCervix's (reported skip, or an error with
``on_bad_image="error"``), and so are rows with an empty label. The file must be UTF-8; labels
that a store or a report table cannot carry (control characters, ``|``) are refused.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path, PurePosixPath

from embedcyto.datasets._common import (
    SPLIT_ALIASES,
    file_problem,
    finish,
    read_utf8,
    require_root,
    safe_join,
    short_list,
)
from embedcyto.datasets.records import LabelSpace, Record
from embedcyto.errors import DatasetError
from embedcyto.names import name_problem

LAYOUT = ("a CSV (default root/labels.csv) with columns path,label and optionally split, group "
          "and level columns; paths relative to the root")

DESCRIPTION = "Your own images listed in a CSV (path + label, optional split/group/levels)"


def _as_tuple(value) -> tuple[str, ...]:
    """Accept ``("a", "b")`` or ``"a,b"`` (as given on the command line)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


def _pick_column(header: list[str], wanted: str | None, default: str, path: Path) -> str | None:
    """The optional column to use: as named, or for the default name in any case (``Split``),
    or None when a default-named column is absent."""
    if wanted is None:
        return None
    if wanted in header:
        return wanted
    if wanted == default:
        return next((h for h in header if h.strip().lower() == default), None)
    raise DatasetError(f"{path}, line 1: no column {wanted!r}; columns are {', '.join(header)}")


def _read_rows(csv_file: Path, columns: dict[str, str | None],
               levels: tuple[str, ...]) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(read_utf8(csv_file), newline=""))
    try:
        return _rows(reader, csv_file, columns, levels)
    except csv.Error as err:
        raise DatasetError(f"{csv_file}, line {reader.line_num}: {err}; fix the CSV") from None


def _rows(reader: csv.DictReader, csv_file: Path, columns: dict[str, str | None],
          levels: tuple[str, ...]) -> list[tuple[int, dict]]:
    header = list(reader.fieldnames or [])
    for key in ("path", "label"):
        if columns[key] not in header:
            raise DatasetError(f"{csv_file}, line 1: missing {key} column {columns[key]!r}; "
                               f"columns are {', '.join(header) or '(none)'}; pass "
                               f"{key}_column=<name>")
    for key in ("split", "group"):
        columns[key] = _pick_column(header, columns[key], key, csv_file)
    absent = [c for c in levels if c not in header]
    if absent:
        raise DatasetError(f"{csv_file}, line 1: no level column(s) {', '.join(absent)}")
    rows, end = [], reader.line_num
    for row in reader:
        line, end = end + 1, reader.line_num  # where the row starts (a quoted cell may span lines)
        if None in row or any(v is None for v in row.values()):
            raise DatasetError(f"{csv_file}, line {line}: wrong number of cells")
        rows.append((line, row))
    if not rows:
        raise DatasetError(f"{csv_file} lists no images")
    return rows


def _split_of(value: str, where: str) -> str:
    split = SPLIT_ALIASES.get(value.strip().lower())
    if split is None:
        raise DatasetError(f"{where}: split {value!r} is not one of train, val, test")
    return split


def read_table(root, *, name: str = "csv", csv_file=None, path_column: str = "path",
               label_column: str = "label", split_column: str | None = "split",
               group_column: str | None = "group", level_columns=(), classes=None,
               on_bad_image: str = "skip"):
    """Read a CSV-listed dataset.

    Args:
        root: folder the image paths are relative to.
        name: dataset name.
        csv_file: the CSV (default ``root/labels.csv``; relative paths are taken from root).
        path_column, label_column, split_column, group_column: column names.
        level_columns: label hierarchy columns, coarse to fine (tuple or comma-separated).
        classes: explicit class order (tuple or comma-separated); default sorted labels.
        on_bad_image: "skip" reports rows whose image is missing, "error" raises.

    Raises:
        DatasetError: malformed CSV (file and line named), unknown label or split, duplicate or
            escaping path, no listed image present, or missing images with "error".
    """
    root = require_root(root, LAYOUT)
    csv_path = Path(csv_file) if csv_file is not None else Path("labels.csv")
    csv_path = csv_path if csv_path.is_absolute() else root / csv_path
    if not csv_path.is_file():
        raise DatasetError(f"label file {csv_path} not found; expected {LAYOUT} (pass csv_file)")
    levels = _as_tuple(level_columns)
    columns = {"path": path_column, "label": label_column, "split": split_column,
               "group": group_column}
    rows = _read_rows(csv_path, columns, levels)
    labels = _labels(rows, columns["label"], csv_path)
    order = _as_tuple(classes) or tuple(sorted(set(labels) - {""}))
    spaces = {c: LabelSpace(c, tuple(sorted({r[c].strip() for _, r in rows} - {""})))
              for c in levels}
    records, missing, unlabelled, seen = [], [], [], {}
    for (line, row), label in zip(rows, labels, strict=True):
        where = f"{csv_path}, line {line}"
        full = safe_join(root, row[columns["path"]], where)
        rel = str(PurePosixPath(row[columns["path"]].strip().replace("\\", "/")))
        if rel in seen:
            raise DatasetError(f"{where}: image {rel} already listed on line {seen[rel]}")
        seen[rel] = line
        if not label:
            unlabelled.append((rel, f"no label on line {line} of {csv_path.name}"))
            continue
        if label not in order:
            raise DatasetError(f"{where}: label {label!r} is not among the classes "
                               f"{short_list(order)}")
        problem = file_problem(full)
        if problem is not None:
            missing.append((rel, f"listed in the CSV but {problem}"))
            continue
        split = _split_of(row[columns["split"]], where) if columns["split"] else None
        group = (row[columns["group"]].strip() or None) if columns["group"] else None
        lv = tuple(spaces[c].classes.index(row[c].strip()) if row[c].strip() else -1
                   for c in levels) or None
        records.append(Record(path=rel, label=order.index(label), split=split, group=group,
                              levels=lv))
    _check_missing(root, [p for p, _ in missing], records, on_bad_image)
    extra = _level_metadata(rows, columns["label"], order, levels, spaces)
    return finish(name, "csv", root, order, records, missing + unlabelled,
                  official_split=columns["split"] is not None, **extra)


def _labels(rows: list[tuple[int, dict]], column: str, csv_path: Path) -> list[str]:
    """Each row's label without surrounding blanks ("" for an empty cell, a reported skip).

    Raises:
        DatasetError: a label that stores or reports cannot carry (NUL, newline, ``|``...),
            with its line.
    """
    labels = []
    for line, row in rows:
        label = row[column].strip()
        problem = name_problem(label) if label else None
        if problem is not None:
            raise DatasetError(f"{csv_path}, line {line}: label {label!r} {problem}; correct "
                               "the label")
        labels.append(label)
    return labels


def _check_missing(root: Path, missing: list[str], records: list[Record], on_bad_image: str):
    if missing and not records:
        raise DatasetError(f"none of the {len(missing)} images listed in the CSV exists under "
                           f"{root} (e.g. {missing[0]}); check the root (`root=PATH`)")
    if missing and on_bad_image == "error":
        raise DatasetError(f"{len(missing)} image(s) listed in the CSV are missing under {root}: "
                           f"{short_list(missing, 5)}; restore them or use on_bad_image='skip'")


def _level_metadata(rows, label_column: str, order: tuple[str, ...], levels: tuple[str, ...],
                    spaces: dict[str, LabelSpace]) -> dict:
    """level_maps (class -> level class when all its rows agree, else -1) and the hierarchy."""
    if not levels:
        return {}
    values: dict[tuple[str, str], set[str]] = {}
    parents: dict[tuple[str, str], set[str]] = {}
    for _, row in rows:
        for i, col in enumerate(levels):
            values.setdefault((col, row[label_column].strip()), set()).add(row[col].strip())
            child = row[col].strip()
            if i > 0 and child:
                parents.setdefault((col, child), set()).add(row[levels[i - 1]].strip())
    maps = {}
    for col in levels:
        per_class = []
        for cls in order:
            seen = values.get((col, cls), set())
            one = next(iter(seen)) if len(seen) == 1 else ""
            per_class.append(spaces[col].classes.index(one) if one else -1)
        maps[col] = tuple(per_class)
    hierarchy = {child: next(iter(p)) for (_, child), p in parents.items()
                 if len(p) == 1 and next(iter(p)) and next(iter(p)) != child}
    return {"label_spaces": dict(spaces), "level_names": levels, "level_maps": maps,
            "hierarchy": hierarchy}
