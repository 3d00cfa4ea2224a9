"""The feature store: one HDF5 file of embeddings per (dataset, model).

The store knows nothing of how features were made: writers receive arrays and a provenance
dict, readers return arrays and metadata. The on-disk format is documented in docs/store.md and
is readable with plain h5py.
"""

from __future__ import annotations

from embedcyto.store.catalog import StoreInfo, list_stores, store_info
from embedcyto.store.export import EXPORT_FORMATS, export_store
from embedcyto.store.h5format import FORMAT_NAME, FORMAT_VERSION
from embedcyto.store.merge import MergeResult, merge_shards
from embedcyto.store.paths import default_store_dir, resolve_store_file, store_path
from embedcyto.store.provenance import IDENTITY_KEYS, INFORMATIONAL_KEYS, is_informational
from embedcyto.store.reader import (
    Features,
    Verification,
    load_features,
    validate_features,
    verify_store,
)
from embedcyto.store.shards import Shard, shard_bounds
from embedcyto.store.writer import FeatureWriter, open_writer

__all__ = [
    "EXPORT_FORMATS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "IDENTITY_KEYS",
    "INFORMATIONAL_KEYS",
    "FeatureWriter",
    "Features",
    "MergeResult",
    "Shard",
    "StoreInfo",
    "Verification",
    "default_store_dir",
    "export_store",
    "is_informational",
    "list_stores",
    "load_features",
    "merge_shards",
    "open_writer",
    "resolve_store_file",
    "shard_bounds",
    "store_info",
    "store_path",
    "validate_features",
    "verify_store",
]
