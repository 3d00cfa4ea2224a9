"""Export a store to formats that need neither HDF5 nor embedcyto: ``.npz`` and ``.csv``."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from embedcyto.errors import StoreError
from embedcyto.fsio import atomic_write
from embedcyto.store.reader import Features, load_features

EXPORT_FORMATS = ("npz", "csv")
# Enough significant digits for every value to read back as exactly the stored number.
_DIGITS = {"float16": 5, "float32": 9}


def export_store(
    path: str | os.PathLike,
    out: str | os.PathLike,
    format: str = "npz",  # noqa: A002 - mirrors the CLI option
    split: str | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a store's rows (optionally one split) to ``out``; returns ``out``.

    npz arrays: ``X``, ``labels``, ``ids``, ``splits``, ``groups``, ``classes``, ``provenance``
    (JSON string), and when the dataset has levels ``levels`` and ``level_names``; one
    ``label_space__<name>`` array of class names per extra label space.
    csv columns: ``id, label, class, split, group``, then per level ``<level>`` (index, -1 = none)
    and ``<level>_class``, then ``f0 .. f<dim-1>``.

    Raises:
        StoreError: unknown format, ``out`` exists and ``overwrite`` is False, or the store
            cannot be read.
    """
    if format not in EXPORT_FORMATS:
        raise StoreError(f"export format must be one of {EXPORT_FORMATS}, got {format!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise StoreError(
            f"{out} already exists; pass `overwrite=True` to replace it or choose another "
            "`out=`"
        )
    if not out.parent.is_dir():
        raise StoreError(f"folder {out.parent} does not exist; create it first")
    feats = load_features(path, split=split)
    writer = _write_npz if format == "npz" else _write_csv
    atomic_write(out, lambda handle: writer(handle, feats), needed=np.asarray(feats.X).nbytes)
    return out


def _write_npz(handle, feats: Features) -> None:
    arrays = {
        "X": np.asarray(feats.X),
        "labels": feats.labels,
        "ids": feats.ids,
        "splits": feats.splits,
        "groups": feats.groups,
        "classes": np.array(feats.classes, dtype=str),
        "provenance": np.array(json.dumps(feats.provenance, sort_keys=True)),
    }
    if feats.levels is not None:
        arrays["levels"] = feats.levels
        arrays["level_names"] = np.array(feats.level_names, dtype=str)
    for name, classes in feats.label_spaces.items():
        arrays[f"label_space__{name}"] = np.array(classes, dtype=str)
    np.savez(handle, **arrays)


def _class_name(classes: tuple[str, ...], index: int) -> str:
    return classes[index] if 0 <= index < len(classes) else ""


def _write_csv(handle, feats: Features) -> None:
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
    rows = csv.writer(text)
    dim = feats.X.shape[1]
    levels = feats.level_names if feats.levels is not None else ()
    header = ["id", "label", "class", "split", "group"]
    for level in levels:
        header += [level, f"{level}_class"]
    rows.writerow(header + [f"f{j}" for j in range(dim)])
    fmt = ",".join([f"%.{_DIGITS.get(feats.X.dtype.name, 17)}g"] * dim)
    for i in range(len(feats)):
        label = int(feats.labels[i])
        cells = [
            feats.ids[i],
            label,
            _class_name(feats.classes, label),
            feats.splits[i],
            feats.groups[i],
        ]
        for j, level in enumerate(levels):
            index = int(feats.levels[i, j])
            cells += [index, _class_name(feats.label_spaces.get(level, ()), index)]
        buffer = io.StringIO()
        csv.writer(buffer).writerow(cells)
        text.write(
            buffer.getvalue().rstrip("\r\n") + "," + fmt % tuple(feats.X[i].tolist()) + "\r\n"
        )
    text.flush()
    text.detach()
