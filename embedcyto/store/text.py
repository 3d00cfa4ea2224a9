"""Class text embeddings kept inside a feature store, in their own group ``text/<label space>``.

Zero-shot classification and the text-aware probes need, for every class, the embedding of its
prompts. They are computed once per (dataset, model) and cached in the store beside the image
features, readable with plain h5py::

    text/<space>/embeddings      float32 [n_classes, dim]  prompt-ensembled, L2-normalised
    text/<space>/per_template    float32 [n_classes, n_templates, dim]  each normalised
    text/<space>  attrs: classes, phrases, templates (JSON lists), prompts_source,
                         prompts_sha256, tokenizer, weights_sha256, logit_scale, model,
                         created_at

``<space>`` is ``classes`` for the primary labels, else a label space (HiCervix's levels). A
cached entry is used only while its classes, phrases, templates, tokenizer and weights all match
the request; otherwise it is stale and recomputed. Writing never touches the image features in
place: the file is rebuilt in memory with the new group and replaces the old one atomically
(:func:`embedcyto.fsio.atomic_write_bytes`) under the store's writer lock, so a crash leaves
the store as it was.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from embedcyto.errors import StoreError
from embedcyto.fsio import atomic_write_bytes
from embedcyto.store.lock import StoreLock
from embedcyto.store.paths import lock_path
from embedcyto.store.reader import open_store_file

GROUP = "text"
PRIMARY = "classes"
_LIST_ATTRS = ("classes", "phrases", "templates")


@dataclass(frozen=True)
class TextEmbeddings:
    """The class embeddings of one label space and what made them."""

    space: str
    embeddings: np.ndarray
    per_template: np.ndarray
    classes: tuple[str, ...]
    phrases: tuple[str, ...]
    templates: tuple[str, ...]
    prompts_source: str
    prompts_sha256: str
    tokenizer: str
    weights_sha256: str
    logit_scale: float
    model: str

    def matches(self, other: "TextEmbeddings | dict") -> bool:
        """Same classes, prompts, tokenizer and weights (what decides the vectors)."""
        keys = ("classes", "phrases", "templates", "prompts_sha256", "tokenizer",
                "weights_sha256", "model")
        get = other.get if isinstance(other, dict) else lambda k: getattr(other, k)
        return all(_plain(getattr(self, k)) == _plain(get(k)) for k in keys)


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def read_text_embeddings(path: str | os.PathLike, space: str = PRIMARY) -> TextEmbeddings | None:
    """The cached embeddings of ``space`` in the store at ``path``, or None when absent."""
    with open_store_file(path) as f:
        node = f.get(f"{GROUP}/{space}")
        if node is None:
            return None
        attrs = {k: node.attrs[k] for k in node.attrs}
        try:
            lists = {k: tuple(json.loads(attrs[k])) for k in _LIST_ATTRS}
            return TextEmbeddings(
                space=space, embeddings=node["embeddings"][()],
                per_template=node["per_template"][()], **lists,
                prompts_source=str(attrs["prompts_source"]),
                prompts_sha256=str(attrs["prompts_sha256"]), tokenizer=str(attrs["tokenizer"]),
                weights_sha256=str(attrs["weights_sha256"]),
                logit_scale=float(attrs["logit_scale"]), model=str(attrs["model"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise StoreError(f"{path}: text embeddings of {space!r} are malformed ({err}); "
                             "delete them with `h5py` or re-extract the store") from err


def _write_group(f: h5py.File, entry: TextEmbeddings) -> None:
    name = f"{GROUP}/{entry.space}"
    if name in f:
        del f[name]
    node = f.require_group(GROUP).create_group(entry.space)
    node.create_dataset("embeddings", data=np.asarray(entry.embeddings, dtype=np.float32),
                        fletcher32=True)
    node.create_dataset("per_template", data=np.asarray(entry.per_template, dtype=np.float32),
                        fletcher32=True)
    for key in _LIST_ATTRS:
        node.attrs[key] = json.dumps(list(getattr(entry, key)))
    for key in ("prompts_source", "prompts_sha256", "tokenizer", "weights_sha256", "model"):
        node.attrs[key] = str(getattr(entry, key))
    node.attrs["logit_scale"] = float(entry.logit_scale)
    node.attrs["created_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_text_embeddings(path: str | os.PathLike, entries: list[TextEmbeddings]) -> None:
    """Add (or replace) the ``text/<space>`` groups of ``entries`` in the store at ``path``.

    Raises:
        StoreError: not a complete store, or the embeddings do not fit its classes.
        StoreLockedError: another process is writing the store.
    """
    path = Path(path)
    with open_store_file(path):
        pass  # a complete embedcyto store, or a clear error
    for entry in entries:
        n, dim = np.shape(entry.embeddings)
        if n != len(entry.classes) or np.shape(entry.per_template)[::2] != (n, dim):
            raise StoreError(f"text embeddings of {entry.space!r}: shapes "
                             f"{np.shape(entry.embeddings)} / {np.shape(entry.per_template)} do "
                             f"not fit {len(entry.classes)} classes")
    with StoreLock(lock_path(path), path):
        buffer = io.BytesIO(path.read_bytes())
        with h5py.File(buffer, "r+") as f:
            for entry in entries:
                _write_group(f, entry)
        atomic_write_bytes(path, buffer.getvalue())
