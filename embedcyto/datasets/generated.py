"""The marker that says a dataset folder holds generated images, not real cells.

:func:`embedcyto.datasets.fixtures.make_fixture` writes ``embedcyto-generated.json`` in the
root of every dataset it makes. Adapters look for it (``Dataset.generated``), extraction
records it in the store (``generated_data``), probe rows and LoRA runs carry it, and the report
warns on every figure built from such numbers: a model that scores well on drawn cells says
nothing about real ones. The marker's presence alone decides (its content is for people), so a
damaged or empty marker still counts as generated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The marker file in the root of a generated dataset.
GENERATED_MARKER = "embedcyto-generated.json"


def is_generated(root) -> bool:
    """Whether the dataset under ``root`` was generated (its root holds the marker)."""
    return root is not None and (Path(root) / GENERATED_MARKER).is_file()


def write_marker(root, **made_with: Any) -> Path:
    """Write the marker in ``root`` (durably: later runs trust it) and return its path.

    ``made_with`` (adapter, seed, ...) is recorded so a reader of the folder sees how it was made.
    """
    from embedcyto.fsio import atomic_write_json

    return atomic_write_json(Path(root) / GENERATED_MARKER, {
        "generated_by": "embedcyto.datasets.fixtures.make_fixture",
        "note": "the images in this folder were drawn by a program, not taken from real "
                "cells: numbers computed on them say nothing about any real dataset",
        **made_with})
