"""Frozen dataclass configs and JSON: strict ``from_dict``, and what differs between two.

Every config that round-trips through JSON (backbone cards, LoRA settings and runs) reads a
dict the same way: unknown keys are refused with the valid ones listed, because a typo in a
config file must not silently fall back to a default. And every message that says why a saved
result cannot be reused (a store made from other inputs, a LoRA run with other settings, a
report cell mixing settings) lists only the keys that differ, one ``key: old -> new`` each,
instead of printing two whole configs for the reader to compare.

Nothing here imports more than the standard library.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from embedcyto.errors import EmbedcytoError

T = TypeVar("T")

#: Stands for a key that one side does not have; shown as ``<missing>``.
MISSING: Any = object()


def from_dict(cls: type[T], data: Any, *, error: type[Exception] = EmbedcytoError,
              what: str = "setting", where: str = "") -> T:
    """``cls(**data)`` for a dataclass, refusing unknown keys and wrong types with ``error``.

    Args:
        cls: the dataclass to build.
        data: a mapping of field names to values.
        error: the exception raised (the caller's own :class:`EmbedcytoError` subclass).
        what: how the message names one key ("LoRA setting", "field").
        where: what the message is about, as its opening words ("card 'uni': ").
    """
    if not isinstance(data, Mapping):
        raise error(f"{where}malformed {what}s: expected a JSON object, got "
                    f"{type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"{where}unknown {what}(s) {unknown}; valid: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as err:
        raise error(f"{where}malformed {what}s: {err}") from err


def from_json(cls: type[T], text: str, *, error: type[Exception] = EmbedcytoError,
              what: str = "setting") -> T:
    """:func:`from_dict` of a JSON object's text."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"malformed {what}s: {err}") from err
    return from_dict(cls, data, error=error, what=what)


def flatten(data: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys: ``{"settings": {"rank": 2}}`` ->
    ``{"settings.rank": 2}``, so that a difference names the innermost key that changed."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def differences(old: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
    """Keys (dotted, see :func:`flatten`) whose values differ, as ``(key, old, new)``, sorted.

    A key on one side only has :data:`MISSING` on the other.
    """
    a, b = flatten(old), flatten(new)
    return [(key, a.get(key, MISSING), b.get(key, MISSING))
            for key in sorted(set(a) | set(b)) if a.get(key, MISSING) != b.get(key, MISSING)]


def _short(value: Any, limit: int = 80) -> str:
    text = "<missing>" if value is MISSING else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_differences(diffs: list[tuple[str, Any, Any]]) -> str:
    """``key: old -> new`` for each difference, joined by ``"; "`` (e.g. ``lr: 0.001 -> 0.02``)."""
    return "; ".join(f"{key}: {_short(a)} -> {_short(b)}" for key, a, b in diffs)


def what_differs(old: Mapping, new: Mapping) -> str:
    """:func:`describe_differences` of :func:`differences`: the one-line answer for messages."""
    return describe_differences(differences(old, new))
