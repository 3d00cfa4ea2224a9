"""Reading and writing the workspace file (TOML).

Reading uses the standard library (``tomllib``, Python 3.11+; the ``tomli`` backport before).
Writing covers exactly what a workspace holds - tables of strings, numbers, booleans and lists
of those - so embedcyto needs no TOML-writing dependency, and what it writes reads back equal.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

from embedcyto.errors import EmbedcytoError

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class WorkspaceError(EmbedcytoError):
    """The workspace file is missing, malformed, or names things that do not exist."""


def loads(text: str, *, source: str = "workspace") -> dict:
    """Parse TOML text; a syntax error names the file, line and column."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise WorkspaceError(f"{source} is not valid TOML ({err}); fix that line, or write a new "
                             "workspace with `embedcyto init`") from err


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise WorkspaceError(f"cannot write the non-finite number {value} to a workspace")
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise WorkspaceError(f"cannot write a {type(value).__name__} to a workspace: {value!r}")


def dumps(data: Mapping[str, Any], *, header: str = "") -> str:
    """TOML text for nested mappings (tables) of plain values; ``None`` values are left out."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    _table(lines, (), data)
    return "\n".join(lines).strip("\n") + "\n"


def _table(lines: list[str], path: tuple[str, ...], data: Mapping[str, Any]) -> None:
    plain = {k: v for k, v in data.items() if v is not None and not isinstance(v, Mapping)}
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    if path and (plain or not tables):
        lines.append("")
        lines.append("[" + ".".join(_key(p) for p in path) + "]")
    for key, value in plain.items():
        lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in tables.items():
        _table(lines, path + (key,), value)
