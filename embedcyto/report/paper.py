"""The study's published numbers, as data with their source, to sit beside a user's own.

``data/paper_reference.json`` holds what embedcyto can cite: HierSwin's per-level HiCervix
accuracies (the reference of Experiment 3) and room for Table 1 of Dausort et al. (validation
accuracy of the linear classifier, models × datasets). The report adds a "<model> (paper)" row
under each model of Table 1 for which published values are present, so a user with real weights
and data sees at once where their numbers agree. Published numbers are percent, as printed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from embedcyto.report.aggregate import Table, reference_cell
from embedcyto.report.records import ReportError

PAPER_FILE = Path(__file__).with_name("data") / "paper_reference.json"
PAPER_SUFFIX = " (paper)"


@dataclass(frozen=True)
class PaperReference:
    """Published values (percent) and where they come from."""

    source: str
    table1: Mapping[str, Mapping[str, float]]  # model -> dataset -> accuracy on validation
    table1_note: str
    hierswin: Mapping[str, float]               # level_1..3, average
    hierswin_source: str


def _percent(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ReportError(f"{where}: expected a percentage (0-100), found {value!r}")
    return float(value)


def load_paper_reference(path=PAPER_FILE) -> PaperReference:
    """Read and check the published values.

    Raises:
        ReportError: the file is missing, not JSON, or holds something that is not a percentage.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        table1, hierswin = data["table1"], data["hierswin"]
        values = {str(m): {str(d): _percent(v, f"{path}: table1 {m}/{d}")
                           for d, v in row.items()}
                  for m, row in table1["values"].items()}
        levels = {str(k): _percent(v, f"{path}: hierswin {k}")
                  for k, v in hierswin["values"].items()}
        return PaperReference(str(data["source"]), values, str(table1.get("note", "")), levels,
                              str(hierswin["source"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ReportError(f"cannot read the published reference values in {path}: {err}") from err


def with_paper_rows(table: Table, table1: Mapping[str, Mapping[str, float]]) -> Table:
    """``table`` (models × datasets) with a "<model> (paper)" row under each model that has
    published values; cells without a published value stay empty."""
    rows = []
    added = False
    for name, cells in table.rows:
        rows.append((name, cells))
        published = table1.get(name)
        if not published:
            continue
        paper = tuple(reference_cell(published[c] / 100) if c in published else None
                      for c in table.columns)
        rows.append((name + PAPER_SUFFIX, paper))
        added = True
    if not added:
        return table
    note = (table.note + " " if table.note else "") + (
        "Rows marked (paper): Dausort et al.'s published accuracy on their validation split "
        "(this table's own rows are test accuracy).")
    return Table(table.title, table.row_header, table.columns, tuple(rows), note=note)
