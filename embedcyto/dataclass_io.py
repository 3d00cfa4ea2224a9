"""Building embedcyto's frozen dataclasses (model cards, run settings) from JSON-like dicts.

Cards and settings come from files users edit by hand. A misspelt key that was silently dropped
would leave the default in force while the user believes otherwise, so every unknown key is an
error that lists the valid ones, raised as the caller's own error type.
"""

from __future__ import annotations

import dataclasses
import json
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


def from_json(cls: type[T], text: str, error: type[Exception], what: str) -> T:
    """:func:`from_mapping` of a JSON object; malformed JSON or a non-object is ``error`` too."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{what} is malformed JSON: {err}") from err
    if not isinstance(data, dict):
        raise error(f"{what} must be a JSON object, not {type(data).__name__}")
    return from_mapping(cls, data, error, what)
