"""Open a dataset the way the store folder expects: its split saved beside its stores.

Every stage that reads images (extraction, LoRA, the pipelines) must see the same split, so the
split file of dataset ``NAME`` lives at ``<store>/<NAME>/splits.json``, next to the feature
stores computed from it. This is the one place that rule is written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from embedcyto.datasets.records import Dataset
from embedcyto.datasets.splits import DEFAULT_RATIOS


def dataset_name(adapter: str, root: str | os.PathLike, name: str | None = None) -> str:
    """The store folder name: ``name``, else the adapter for the known datasets, else the root's
    folder name (``folder`` and ``csv`` layouts)."""
    from embedcyto.datasets.registry import KNOWN_DATASETS

    if name is not None:
        return name
    return adapter if adapter in KNOWN_DATASETS else Path(root).expanduser().resolve().name


def open_for_store(adapter: str, root: str | os.PathLike, *, store_dir: str | os.PathLike,
                   name: str | None = None, split_seed: int = 0,
                   ratios: Sequence[float] = DEFAULT_RATIOS, on_bad_image: str = "skip",
                   options: Mapping[str, Any] | None = None,
                   verify_size: int | None = None) -> tuple[Dataset, Path]:
    """Open a dataset with its split saved beside its stores (``<store_dir>/<name>/splits.json``).

    With ``on_bad_image="skip"`` every image is checked first (large JPEGs decoded at
    ``verify_size``, as extraction will) and unreadable ones are left out; with "error" nothing
    is checked up front and the first unreadable image stops the stage that reads it.

    Args:
        adapter, root: the layout and its root folder (see ``open_dataset``).
        store_dir: the store folder.
        name: dataset name (see :func:`dataset_name`).
        split_seed, ratios: a generated split's seed and (train, val, test) fractions.
        options: adapter options, e.g. ``{"csv_file": "labels.csv"}``.

    Returns:
        (dataset, split_dir)
    """
    from embedcyto.datasets.api import open_dataset

    name = dataset_name(adapter, root, name)
    split_dir = Path(store_dir) / name
    dataset = open_dataset(adapter, root, name=name, split_dir=split_dir, seed=split_seed,
                           ratios=tuple(float(r) for r in ratios), on_bad_image=on_bad_image,
                           verify_images=on_bad_image == "skip", verify_size=verify_size,
                           **dict(options or {}))
    return dataset, split_dir
