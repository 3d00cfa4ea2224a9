"""Every store of a folder exported at once, for other tools (pandas, polars, R, Excel).

``npz`` and ``csv`` are :func:`embedcyto.store.export_store`'s formats; ``parquet`` (needs the
``pyarrow`` package: ``pip install embedcyto[parquet]``) has the csv's columns - ``id``,
``label``, ``class``, ``split``, ``group``, per level ``<level>`` and ``<level>_class``, then
``f0 .. f<dim-1>`` - with the store's provenance as JSON in the file's metadata
(``embedcyto.provenance``). Files go to ``OUT/<dataset>/<model>.<format>``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from embedcyto.errors import StoreError

BULK_FORMATS = ("npz", "parquet", "csv")


def _parquet_table(feats):
    try:
        import pyarrow as pa
    except ImportError as err:
        raise StoreError("parquet export needs pyarrow: `pip install pyarrow` (or "
                         "`pip install embedcyto[parquet]`), or export as `fmt=npz` or `fmt=csv`") \
            from err
    classes = np.array(list(feats.classes) + [""], dtype=str)
    labels = np.asarray(feats.labels)
    columns = {"id": feats.ids.astype(str), "label": labels,
               "class": classes[np.where((labels >= 0) & (labels < len(feats.classes)),
                                         labels, -1)],
               "split": feats.splits.astype(str), "group": feats.groups.astype(str)}
    if feats.levels is not None:
        for j, level in enumerate(feats.level_names):
            names = np.array(list(feats.label_spaces.get(level, ())) + [""], dtype=str)
            index = feats.levels[:, j]
            columns[level] = index
            columns[f"{level}_class"] = names[np.where((index >= 0) & (index < len(names) - 1),
                                                       index, -1)]
    X = np.asarray(feats.X)
    for j in range(X.shape[1]):
        columns[f"f{j}"] = X[:, j]
    table = pa.table(columns)
    meta = {b"embedcyto.provenance": json.dumps(feats.provenance, sort_keys=True).encode()}
    return table.replace_schema_metadata(meta)


def export_parquet(path, out) -> Path:
    """One store as a Parquet file (atomically written)."""
    import pyarrow.parquet as pq

    from embedcyto.fsio import atomic_write
    from embedcyto.store import load_features

    table = _parquet_table(load_features(path))
    return atomic_write(out, lambda handle: pq.write_table(table, handle))


def export_all(store_dir: str | os.PathLike, out_dir: str | os.PathLike, fmt: str = "npz", *,
               datasets=None, overwrite: bool = False) -> list[tuple[str, str, Path]]:
    """Export every complete store (of ``datasets``, default all) to ``out_dir``.

    Returns:
        (dataset, model, written file) per store, in dataset then model order.

    Raises:
        StoreError: unknown format, no complete store, or a target file that exists (without
            ``overwrite``) - checked for every store before anything is written.
    """
    from embedcyto.store import export_store, list_stores

    if fmt not in BULK_FORMATS:
        raise StoreError(f"export format must be one of {', '.join(BULK_FORMATS)}, not {fmt!r}")
    infos = [i for i in list_stores(store_dir) if i.state == "complete"
             and (not datasets or i.dataset in datasets)]
    if not infos:
        raise StoreError(f"no complete store to export in {store_dir}; `embedcyto status` "
                         "shows what there is")
    out_dir = Path(out_dir)
    targets = [(i, out_dir / i.dataset / f"{i.model}.{fmt}") for i in infos]
    existing = [str(t) for _, t in targets if t.exists()]
    if existing and not overwrite:
        raise StoreError(f"{len(existing)} file(s) already exist (e.g. {existing[0]}); pass "
                         "`overwrite=True` to replace them or choose another `out_dir=`")
    written = []
    for info, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "parquet":
            export_parquet(info.path, target)
        else:
            export_store(info.path, target, format=fmt, overwrite=True)
        written.append((info.dataset, info.model, target))
    return written
