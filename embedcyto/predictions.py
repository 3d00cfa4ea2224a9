"""Per-image test predictions: one compact ``.npz`` file per probe row or LoRA run.

Keeping every test prediction means that later questions (is model A really better than B on
these images? which classes does it miss? can its probabilities be trusted?) need no
recomputation, and two models' predictions can be joined by image id because every model of a
dataset is evaluated on the same rows.

File format (NumPy ``.npz``, compressed; read with :func:`read_predictions`, never with pickle):

========== ============ ============================================================
array      dtype        content
========== ============ ============================================================
ids        str (n,)     test image ids (paths relative to the dataset root)
y_true     int64 (n,)   true class index into ``classes``
y_pred     int64 (n,)   predicted class index (argmax of ``proba``)
proba      float32 (n,k) class probabilities over the whole label space
classes    str (k,)     class names, in label order
val_ids    str (m,)     validation ids (optional: for temperature scaling)
val_true   int64 (m,)   validation labels (optional)
val_proba  float32 (m,k) validation probabilities (optional)
levels     int64 (n,L)  hierarchical datasets: true class per level, -1 where unset
meta       str ()       JSON: dataset, model, method, shots, fraction, seed, level_names,
                        level_maps, and the store identity or run folder it came from
========== ============ ============================================================

Probe rows write ``<results>/predictions/<dataset>/<digest>.npz`` and name it, relative to the
results folder, in the row's ``predictions_file`` field (``digest``: a hash of the row's task and
store identity; the seeds of a deterministic row share one file, whose ``meta`` seed is null).
LoRA runs write ``predictions.npz`` in their run folder with the same arrays.
Few-shot episode rows keep their per-episode accuracies (``episode_accuracy``) instead: the
images of 600 episodes would dwarf the results, and episodes are what their comparisons pair.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedcyto.errors import EmbedcytoError

PREDICTIONS_DIR = "predictions"
ROW_FIELD = "predictions_file"
#: Key under which the evaluation hands its arrays to the writer (never written to JSON).
PENDING = "_predictions"


class PredictionsError(EmbedcytoError):
    """A predictions file is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class Predictions:
    """The test (and optionally validation) predictions of one model on one dataset."""

    ids: np.ndarray
    y_true: np.ndarray
    proba: np.ndarray
    classes: tuple[str, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)
    val_ids: np.ndarray | None = None
    val_true: np.ndarray | None = None
    val_proba: np.ndarray | None = None
    levels: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.ids)
        if len(self.y_true) != n or self.proba.shape != (n, len(self.classes)):
            raise PredictionsError(
                f"predictions disagree in size: {n} ids, {len(self.y_true)} labels, proba "
                f"{self.proba.shape} for {len(self.classes)} classes")
        if self.val_proba is not None and (self.val_true is None or
                                           len(self.val_true) != len(self.val_proba)):
            raise PredictionsError("validation probabilities need as many validation labels")

    @property
    def y_pred(self) -> np.ndarray:
        return np.argmax(self.proba, axis=1)

    @property
    def correct(self) -> np.ndarray:
        return self.y_pred == self.y_true


def pack(ids, y_true, proba, classes: Sequence[str], meta: Mapping[str, Any], *, val=None,
         levels=None) -> Predictions:
    """Build a :class:`Predictions` from evaluation arrays (``val``: (ids, labels, proba))."""
    extra = {}
    if val is not None:
        extra = {"val_ids": np.asarray(val[0]).astype(str),
                 "val_true": np.asarray(val[1], dtype=np.int64),
                 "val_proba": np.asarray(val[2], dtype=np.float32)}
    return Predictions(ids=np.asarray(ids).astype(str), y_true=np.asarray(y_true, np.int64),
                       proba=np.asarray(proba, dtype=np.float32), classes=tuple(classes),
                       meta=dict(meta), levels=None if levels is None
                       else np.asarray(levels, dtype=np.int64), **extra)


def _arrays(pred: Predictions) -> dict[str, np.ndarray]:
    out = {"ids": pred.ids.astype(str), "y_true": pred.y_true, "y_pred": pred.y_pred,
           "proba": pred.proba.astype(np.float32), "classes": np.array(pred.classes, dtype=str),
           "meta": np.array(json.dumps(pred.meta, sort_keys=True, default=str))}
    for name in ("val_ids", "val_true", "val_proba", "levels"):
        value = getattr(pred, name)
        if value is not None:
            out[name] = value
    return out


def write_predictions(path: str | os.PathLike, pred: Predictions) -> Path:
    """Write ``pred`` atomically (a crash never leaves half a file)."""
    from embedcyto.fsio import atomic_write

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **_arrays(pred))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Read a predictions file (``allow_pickle=False``: no code runs from the file)."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"no predictions file at {path}: re-run the probe or LoRA run "
                               "that wrote it (`embedcyto probe` with `rerun=True`)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise PredictionsError(f"{path} is not a readable predictions file ({err}); delete it "
                               "and re-run the probe or LoRA run that wrote it") from err
    missing = [k for k in ("ids", "proba") if k not in arrays]
    if missing:
        raise PredictionsError(f"{path} lacks {', '.join(missing)}: not an embedcyto "
                               "predictions file")
    y_true = arrays.get("y_true", arrays.get("labels"))  # LoRA runs before this format
    classes = arrays.get("classes")
    classes = tuple(classes.tolist()) if classes is not None else tuple(
        str(i) for i in range(arrays["proba"].shape[1]))
    meta = json.loads(str(arrays["meta"])) if "meta" in arrays else {}
    return Predictions(ids=arrays["ids"].astype(str), y_true=y_true.astype(np.int64),
                       proba=arrays["proba"], classes=classes, meta=meta,
                       val_ids=arrays.get("val_ids"), val_true=arrays.get("val_true"),
                       val_proba=arrays.get("val_proba"), levels=arrays.get("levels"))


def row_digest(row: Mapping[str, Any]) -> str:
    """A short hash of what identifies a probe row (task and store identity)."""
    keys = ("dataset", "model", "method", "shots", "seed", "options", "store_identity")
    text = json.dumps({k: row.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def keep_row_predictions(results_dir: str | os.PathLike, rows: list[dict]) -> list[dict]:
    """Write each row's pending predictions beside the results; the row names the file.

    The evaluation leaves its arrays under :data:`PENDING`; they are removed from the row (so it
    stays small JSON) and written to ``predictions/<dataset>/<digest>.npz``.
    """
    for row in rows:
        pending = row.pop(PENDING, None)
        if pending is None:
            continue
        # a deterministic row is the same computation for every seed: its seeds share one file
        key = {**row, "seed": None} if row.get("deterministic") else row
        meta = {k: key.get(k) for k in ("dataset", "model", "method", "shots", "seed",
                                        "options", "store_identity")}
        meta.update(pending.get("meta", {}))
        pred = pack(pending["ids"], pending["y_true"], pending["proba"], pending["classes"],
                    meta, val=pending.get("val"), levels=pending.get("levels"))
        rel = Path(PREDICTIONS_DIR) / row["dataset"] / f"{row_digest(key)}.npz"
        write_predictions(Path(results_dir) / rel, pred)
        row[ROW_FIELD] = rel.as_posix()
    return rows


def row_predictions(results_dir: str | os.PathLike, row: Mapping[str, Any]) -> Predictions:
    """The predictions of one probe row (raises when the row has none)."""
    rel = row.get(ROW_FIELD)
    if not rel:
        raise PredictionsError(
            f"the {row.get('method')} row of {row.get('model')} on {row.get('dataset')} has no "
            "per-image predictions (written before embedcyto kept them): re-run it with "
            "`embedcyto probe` and `rerun=True`")
    return read_predictions(Path(results_dir) / rel)
