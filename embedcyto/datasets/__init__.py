"""Datasets: adapters that turn a folder on disk into labelled, split records.

``open_dataset(adapter, root, ...)`` is the entry point; ``list_adapters()`` says which layouts
exist and what each expects; ``read_image`` decodes any image to RGB; ``check_dataset``
summarises a root for ``embedcyto datasets check``. Nothing here knows about models or stores.
"""

from __future__ import annotations

from embedcyto.datasets.api import open_dataset
from embedcyto.datasets.check import DatasetReport, check_dataset, summarize
from embedcyto.datasets.hicervix_labels import hicervix_study25_labels, read_hicervix_labels
from embedcyto.datasets.images import read_image
from embedcyto.datasets.records import SPLITS, Dataset, LabelSpace, Record
from embedcyto.datasets.registry import AdapterInfo, list_adapters
from embedcyto.datasets.splits import DEFAULT_RATIOS, SPLIT_FILE, assign_splits, split_hash

__all__ = [
    "AdapterInfo",
    "DEFAULT_RATIOS",
    "Dataset",
    "DatasetReport",
    "LabelSpace",
    "Record",
    "SPLITS",
    "SPLIT_FILE",
    "assign_splits",
    "check_dataset",
    "hicervix_study25_labels",
    "list_adapters",
    "open_dataset",
    "read_hicervix_labels",
    "read_image",
    "split_hash",
    "summarize",
]
