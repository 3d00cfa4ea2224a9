"""The known dataset adapters, as data: name, description, expected layout, reader function.

Nothing registers itself at import time; adding an adapter means adding one row here.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass

from embedcyto.errors import DatasetError


@dataclass(frozen=True)
class AdapterInfo:
    """One dataset layout embedcyto can read.

    Attributes:
        name: the adapter's key (``--dataset`` on the command line).
        description: one line about the dataset.
        layout: what the root folder must contain (shown in errors and ``datasets list``).
        reader: ``"module:function"`` that reads a root into a Dataset (imported on use).
    """

    name: str
    description: str
    layout: str
    reader: str

    def load_reader(self):
        module, attr = self.reader.split(":")
        return getattr(importlib.import_module(module), attr)


def _info(name: str, module: str, function: str) -> AdapterInfo:
    mod = importlib.import_module(f"embedcyto.datasets.{module}")
    return AdapterInfo(name, mod.DESCRIPTION, mod.LAYOUT, f"embedcyto.datasets.{module}:{function}")


_ROWS = (
    ("sipakmed", "sipakmed", "read_sipakmed"),
    ("mlcc", "mlcc", "read_mlcc"),
    ("bcfc", "bcfc", "read_bcfc"),
    ("hicervix", "hicervix", "read_hicervix"),
    ("folder", "folder", "read_folder"),
    ("csv", "table", "read_table"),
)

#: Adapters whose datasets are the study's; the others read users' own data.
KNOWN_DATASETS = ("sipakmed", "mlcc", "bcfc", "hicervix")


def list_adapters() -> list[AdapterInfo]:
    """Every adapter with its description and expected layout, in a fixed order."""
    return [_info(*row) for row in _ROWS]


def get_adapter(name: str) -> AdapterInfo:
    """The adapter called ``name``.

    Raises:
        DatasetError: unknown name (the message lists the known ones and close matches).
    """
    for row in _ROWS:
        if row[0] == name:
            return _info(*row)
    names = [row[0] for row in _ROWS]
    close = difflib.get_close_matches(str(name).lower(), names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise DatasetError(f"unknown dataset adapter {name!r}.{hint} Known adapters: "
                       f"{', '.join(names)} (see `embedcyto datasets list`)")
