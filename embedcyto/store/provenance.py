"""Provenance: what a store was made from, and which parts decide whether it can be reused.

A store is reused only when its *identity* matches the request. Identity is every provenance
key except the informational ones (times, library versions, device, host...): a key embedcyto
does not know about counts as identity, so a new input (say, a LoRA adapter hash) can never be
silently ignored.
"""

from __future__ import annotations

import json
from typing import Any

from embedcyto.configs import MISSING as _MISSING
from embedcyto.configs import describe_differences  # noqa: F401  (one message for every caller)
from embedcyto.errors import StoreError

# Keys embedcyto itself records that decide what the features are. Listed for documentation
# and for the order of messages; unknown keys are treated the same way.
IDENTITY_KEYS = (
    "dataset",
    "model",
    "card",
    "weights_sha256",
    "preprocessing",
    "precision",
    "decode",
    "dtype",
    "embed_dim",
    "dataset_fingerprint",
    "split_hash",
    "rows_sha256",
    "generated_data",
)

#: The key that says the features were computed from generated images (a dataset root holding
#: :data:`embedcyto.datasets.generated.GENERATED_MARKER`); stores written before embedcyto
#: recorded it have no such key and read as made from real data.
GENERATED_DATA = "generated_data"
#: Identity keys added after stores existed, with the value an old store without them stands
#: for: a store is not made stale by a key it could not have recorded.
IDENTITY_DEFAULTS = {GENERATED_DATA: False}

# Keys that describe how a store was made but not what it contains.
INFORMATIONAL_KEYS = frozenset(
    {
        "created_at",
        "started_at",
        "versions",
        "device",
        "hostname",
        "host",
        "timings",
        "duration_s",
        "batch_size",
        "num_workers",
        "command",
        "user",
        "platform",
        "python",
        "rows_resumed",
        "dataset_root",
        "weights_path",
        "skipped_images",
        "sharding",
    }
)


def is_informational(key: str) -> bool:
    """True for keys that never make a store stale (``*_version`` keys included)."""
    return key in INFORMATIONAL_KEYS or key.endswith("_version")


def normalize(provenance: dict[str, Any]) -> dict[str, Any]:
    """A JSON round-tripped copy (tuples become lists) so stored and requested values compare.

    Raises:
        StoreError: the provenance is not a dict of JSON-able values with string keys.
    """
    if not isinstance(provenance, dict):
        raise StoreError(f"provenance must be a dict, got {type(provenance).__name__}")
    try:
        text = json.dumps(provenance, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise StoreError(
            f"provenance must hold only JSON values (str, number, bool, None, list, dict with "
            f"string keys): {err}"
        ) from err
    return json.loads(text)


def is_generated_data(provenance: dict[str, Any]) -> bool:
    """Whether a store's features come from generated images (False for stores without the
    key, written before embedcyto recorded it)."""
    return provenance.get(GENERATED_DATA) is True


def identity(provenance: dict[str, Any]) -> dict[str, Any]:
    """The part of a provenance dict that decides whether a store can be reused."""
    return {k: v for k, v in provenance.items() if not is_informational(k)}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Identity keys whose values differ, as (key, old, new); absent values are ``<missing>``
    (or, for keys of :data:`IDENTITY_DEFAULTS`, the value they stand for)."""
    old_id, new_id = identity(old), identity(new)
    keys = [k for k in IDENTITY_KEYS if k in old_id or k in new_id]
    keys += sorted(k for k in set(old_id) | set(new_id) if k not in IDENTITY_KEYS)
    diffs = []
    for key in keys:
        default = IDENTITY_DEFAULTS.get(key, _MISSING)
        a, b = old_id.get(key, default), new_id.get(key, default)
        if a != b:
            diffs.append((key, a, b))
    return diffs


def library_versions() -> dict[str, str]:
    """Versions of what shaped the features or a run, for provenance (informational)."""
    import importlib.metadata as md
    import platform

    versions = {}
    for dist in ("embedcyto", "torch", "open_clip_torch", "timm", "h5py", "numpy", "pillow"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    versions["python"] = platform.python_version()
    return versions
