"""Tables as Markdown and CSV text (percent, mean ± std over seeds).

Rendering only: the numbers come from :mod:`embedcyto.report.aggregate`. Markdown shows one
decimal (what the study prints); CSV keeps three and gives mean, std and the number of seeds in
separate columns so a spreadsheet can recompute anything.
"""

from __future__ import annotations

import csv
import io

from embedcyto.report.aggregate import DATASET_LABELS, LEVEL_LABELS, Cell, Table

MISSING = "–"


def column_label(name: str) -> str:
    """A column's display name (dataset and level names are spelled as the study does)."""
    return DATASET_LABELS.get(name, LEVEL_LABELS.get(name, name))


def format_cell(cell: Cell | None, digits: int = 1) -> str:
    """``"85.3 ± 1.2"`` in percent; no ``±`` where there is no std; a dash where nothing."""
    if cell is None:
        return MISSING
    mean = f"{100 * cell.mean:.{digits}f}"
    return mean if cell.std is None else f"{mean} ± {100 * cell.std:.{digits}f}"


def to_markdown(table: Table) -> str:
    """A Markdown section: title, pipe table, note."""
    header = [table.row_header] + [column_label(c) for c in table.columns]
    lines = [f"### {table.title}", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + ["---:"] * len(table.columns)) + "|"]
    for name, cells in table.rows:
        lines.append("| " + " | ".join([name] + [format_cell(c) for c in cells]) + " |")
    if not table.rows:
        lines.append("| (no results) |" + " |" * len(table.columns))
    if table.note:
        lines += ["", table.note]
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.3f}"


def to_csv(table: Table) -> str:
    """CSV text: one row per table row, ``<column>_mean``, ``_std``, ``_n`` in percent."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    head = [table.row_header]
    for column in table.columns:
        head += [f"{column}_mean", f"{column}_std", f"{column}_n"]
    writer.writerow(head)
    for name, cells in table.rows:
        row = [name]
        for cell in cells:
            if cell is None:
                row += ["", "", ""]
            else:
                row += [_number(cell.mean), _number(cell.std), str(cell.n) if cell.n else ""]
        writer.writerow(row)
    return buffer.getvalue()
