"""The one check of the names users give embedcyto: datasets, models, classes.

Names travel far: a dataset or model name becomes a folder or file name in the store, every
name is written into HDF5 string arrays and attributes (which cannot hold a NUL byte), into
JSON result rows, Markdown and CSV tables and figure legends. A name that breaks any of these
should be refused when it is first read, with the place it came from, rather than at the end
of an extraction or in a mangled report table.
"""

from __future__ import annotations

import unicodedata

#: Unicode categories refused in every name: control characters (NUL, tab, newline...) and the
#: line and paragraph separators.
_CONTROL_CATEGORIES = ("Cc", "Zl", "Zp")


def name_problem(name, *, file_name: bool = False) -> str | None:
    """What is wrong with ``name`` (a phrase such as "contains '|'"), or None when it is fine.

    Every name must be non-empty text without control characters and without ``|`` (it splits
    a Markdown table cell). With ``file_name=True`` (dataset and model names, which name
    folders and files) it may also not contain a slash or start with a dot.
    """
    if not isinstance(name, str):
        return f"is not text ({type(name).__name__})"
    if not name.strip():
        return "is empty"
    control = sorted({c for c in name if unicodedata.category(c) in _CONTROL_CATEGORIES})
    if control:
        return f"contains the control character(s) {', '.join(repr(c) for c in control)}"
    if "|" in name:
        return "contains '|', which would break the report's tables"
    if file_name and ("/" in name or "\\" in name):
        return "contains a slash, so it cannot name a folder or file"
    if file_name and name.startswith("."):
        return "starts with a dot (a hidden or relative file name)"
    return None


def has_control_characters(text: str) -> bool:
    """True when ``text`` holds a control character (what file names, too, may not carry)."""
    return any(unicodedata.category(c) in _CONTROL_CATEGORIES for c in text)
