"""Bring features made elsewhere into a store, so they are probed on the same splits and episodes.

Another extractor, another lab, a model embedcyto has no card for: their embeddings become a
store of the dataset like any other, provided they describe the same images. The input names
every row (``ids``: the image's path relative to the dataset root, as ``store export`` writes
it), its label and its split; all three are checked against the dataset as embedcyto reads it
(and its saved split file), and any disagreement is refused rather than silently re-split. The
store's provenance says the features came from outside (``source = "imported"``, the file and
its sha256), so nobody mistakes them for an extraction.

Input arrays (``.npz``, or ``.h5``/``.hdf5`` with one dataset per array):
``X`` (or ``features``), rows × dim, finite numbers; ``ids`` (or ``image_id``); ``labels``
(or ``label``): class names, or indices into ``classes`` when that array is given, else into the
dataset's classes; ``splits`` (or ``split``): train, val or test.
"""

from __future__ import annotations

import hashlib

import os
from pathlib import Path

import numpy as np

from embedcyto.errors import StoreError

IMPORT_SUFFIXES = (".npz", ".h5", ".hdf5")
_NAMES = {"X": ("X", "features"), "ids": ("ids", "image_id"), "labels": ("labels", "label"),
          "splits": ("splits", "split"), "classes": ("classes",)}


def _strings(values) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=str)


def read_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The X, ids, labels, splits (and optional classes) arrays of an import file."""
    path = Path(path)
    if path.suffix.lower() not in IMPORT_SUFFIXES:
        raise StoreError(f"{path}: import reads {', '.join(IMPORT_SUFFIXES)} files (arrays X, "
                         "ids, labels, splits); export other formats to one of these first")
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as data:
                raw = {k: np.asarray(data[k]) for k in data.files}
        else:
            import h5py

            with h5py.File(path, "r") as f:
                raw = {k: np.asarray(f[k][()]) for k in f if isinstance(f[k], h5py.Dataset)}
    except (OSError, ValueError) as err:
        raise StoreError(f"cannot read {path}: {err}") from err
    out = {}
    for key, names in _NAMES.items():
        found = next((n for n in names if n in raw), None)
        if found is None and key != "classes":
            raise StoreError(f"{path} has no {' or '.join(names)} array (it has: "
                             f"{', '.join(sorted(raw)) or 'none'})")
        if found is not None:
            out[key] = raw[found]
    return out


def _labels(arrays: dict, dataset, source: Path) -> np.ndarray:
    """Label indices in the dataset's class order, whatever form the file gives them in."""
    labels = arrays["labels"]
    if labels.dtype.kind in "iu":
        if "classes" not in arrays:
            return labels.astype(np.int64)
        classes = _strings(arrays["classes"])
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise StoreError(f"{source}: labels index past the {len(classes)} classes given")
        labels = classes[labels]
    names = _strings(labels)
    index = {c: i for i, c in enumerate(dataset.classes)}
    unknown = sorted(set(names.tolist()) - set(index))
    if unknown:
        raise StoreError(f"{source}: class(es) {', '.join(unknown[:5])} are not classes of "
                         f"dataset {dataset.name!r} ({', '.join(dataset.classes)})")
    return np.array([index[n] for n in names], dtype=np.int64)


def match_rows(arrays: dict, dataset, source: Path, split_file: str) -> np.ndarray:
    """For each dataset record, the row of the file holding it (checked: same images, labels,
    splits; finite features of one width).

    Raises:
        StoreError: naming the first rows that disagree and what to fix.
    """
    X = arrays["X"]
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0 or X.dtype.kind not in "fiu":
        raise StoreError(f"{source}: X must be a non-empty 2-D array of numbers (rows × dim), "
                         f"got shape {X.shape} of {X.dtype}")
    lengths = {k: len(arrays[k]) for k in ("ids", "labels", "splits")}
    if any(n != len(X) for n in lengths.values()):
        raise StoreError(f"{source}: {len(X)} feature rows but {lengths}: one id, label and "
                         "split per row")
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if len(bad):
        raise StoreError(f"{source}: {len(bad)} row(s) hold NaN or infinite features (first: "
                         f"row {bad[0]}); fix them at the source")
    ids = _strings(arrays["ids"])
    if len(set(ids.tolist())) != len(ids):
        raise StoreError(f"{source}: ids repeat; each image must appear once")
    position = {i: n for n, i in enumerate(ids.tolist())}
    wanted = [r.path for r in dataset.records]
    missing = [i for i in wanted if i not in position]
    extra = sorted(set(position) - set(wanted))
    if missing or extra:
        raise StoreError(
            f"{source}: its ids are not the images of dataset {dataset.name!r}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unknown (e.g. "
            f"{extra[:3]}); ids are image paths relative to the dataset root, as "
            "`embedcyto store export` writes them")
    rows = np.array([position[i] for i in wanted], dtype=np.int64)
    labels, splits = _labels(arrays, dataset, source), _strings(arrays["splits"])
    for what, given, expected in (
            ("labels", labels[rows], np.array([r.label for r in dataset.records])),
            ("splits", splits[rows], np.array([r.split or "" for r in dataset.records]))):
        wrong = np.flatnonzero(given != expected)
        if len(wrong):
            first = dataset.records[wrong[0]]
            raise StoreError(
                f"{source}: {len(wrong)} row(s) disagree with dataset {dataset.name!r} on "
                f"{what} (first: {first.path}: file {given[wrong[0]]!r}, dataset "
                f"{expected[wrong[0]]!r}; splits come from {split_file}). Features must be "
                "compared on the same splits: re-make them with these labels and splits")
    return rows


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_features(source: str | os.PathLike, dataset, *, model: str, store_dir,
                    split_dir, dtype: str = "float32", force: bool = False,
                    reserved_names=()) -> Path:
    """Write the features of ``source`` as the store ``store_dir/<dataset>/<model>.h5``.

    ``model`` names the features (a name that is not a model card, so nobody takes them for
    embedcyto's own extraction). Importing the same file again is a no-op; another file under
    the same name is refused unless ``force``. ``reserved_names`` are names the features may
    not take (the caller passes the model cards' names; the store knows nothing of models).
    """
    from embedcyto.datasets.splits import dataset_split_hash
    from embedcyto.store import open_writer, store_path

    source = Path(source)
    if model in set(reserved_names):
        raise StoreError(f"{model!r} is a model card: name imported features something else "
                         f"(e.g. model='ext-{model}'), so they are never mistaken for its "
                         "extraction")
    split_hash = dataset_split_hash(dataset, split_dir)
    split_file = "the dataset's official split" if split_hash == "official" else \
        str(Path(split_dir) / "splits.json")
    arrays = read_arrays(source)
    rows = match_rows(arrays, dataset, source, split_file)
    X = np.asarray(arrays["X"], dtype=np.float64)[rows]
    provenance = {"model": model, "source": "imported", "imported_from": str(source.resolve()),
                  "imported_sha256": _sha256(source), "split_hash": split_hash,
                  "adapter": dataset.adapter, "dataset_root": str(dataset.root)}
    path = store_path(store_dir, dataset.name, model)
    with open_writer(path, dataset=dataset, provenance=provenance, embed_dim=X.shape[1],
                     dtype=dtype, force=force) as writer:
        pending = writer.pending_rows()
        if len(pending):
            writer.write(pending, X[pending])
        writer.commit()
    return path
