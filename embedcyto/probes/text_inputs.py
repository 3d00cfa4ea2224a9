"""What the text-aware probe methods receive besides the image features.

The class text embeddings are cached in the store (:mod:`embedcyto.store.text`) by
:func:`embedcyto.textembed.ensure_text_embeddings` before any probe runs, in the main process;
workers only read them. They are passed to a method's estimator or episode scorer as keyword
arguments (``text``, ``logit_scale`` and, for methods choosing on validation, ``X_val``,
``y_val``), never recorded as options: a result row records the prompts' digest instead, so
changing a prompt makes earlier rows stale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from embedcyto.errors import ProbeError
from embedcyto.store.text import PRIMARY, read_text_embeddings

#: Key of the result-row option that records which prompts made a text method's row.
PROMPTS_OPTION = "prompts_sha256"


def text_inputs(features, *, with_val: bool = False) -> dict[str, Any]:
    """``text`` and ``logit_scale`` of the store's primary classes (and the validation split).

    Raises:
        ProbeError: the store has no cached text embeddings (the message says how to make them).
    """
    entry = read_text_embeddings(features.path, PRIMARY)
    if entry is None or tuple(entry.classes) != tuple(features.classes):
        raise ProbeError(
            f"{features.path} has no class text embeddings for its classes; text-aware methods "
            "need a vision-language model's store, and `embedcyto probe` computes them first "
            "(pass `weights_dir=` where its weights and tokenizer are)")
    out: dict[str, Any] = {"text": np.asarray(entry.embeddings), "logit_scale": entry.logit_scale}
    if with_val:
        mask = np.asarray(features.splits) == "val"
        out["X_val"] = np.asarray(features.X[mask], dtype=np.float32)
        out["y_val"] = np.asarray(features.labels)[mask]
    return out


def method_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options an estimator or scorer accepts (the recorded prompts digest removed)."""
    return {k: v for k, v in options.items() if k != PROMPTS_OPTION}
