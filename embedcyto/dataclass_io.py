"""Building embedcyto's frozen dataclasses (model cards, run settings) from JSON-like dicts.

Cards and settings come from files users edit by hand. A misspelt key that was silently dropped
would leave the default in force while the user believes otherwise, so every unknown key is an
error that lists the valid ones, raised as the caller's own error type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def from_mapping(cls: type[T], data: Mapping[str, Any], error: type[Exception],
                 what: str) -> T:
    """``cls(**data)``, refusing keys that are not fields of ``cls``.

    Args:
        cls: a dataclass.
        data: its fields by name.
        error: the exception type to raise (e.g. ``BackboneError``).
        what: how the message names the object, e.g. ``"card 'tiny-vit'"``.

    Raises:
        error: unknown keys (all listed, with the valid ones), or fields ``cls`` rejects.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"{what}: unknown field(s) {unknown}; valid fields: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as err:
        raise error(f"{what}: {err}") from err
