"""The report's "Which model?" section: per dataset, the paired ranking of its models.

Uses :func:`embedcyto.compare.compare_dataset` (paired tests, Holm-corrected) and writes, per
comparison, ``tables/rank_<stem>.csv`` (model, group, accuracy) and ``tables/pairs_<stem>.csv``
(every pair's difference, interval and p-values).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from embedcyto.errors import ReportError
from embedcyto.report.aggregate import DATASET_LABELS, dataset_order

PAIR_COLUMNS = ("model_a", "model_b", "diff", "low", "high", "p", "p_holm", "test", "n",
                "mcnemar_p", "seeds_p", "significant")


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.3f}"


def _num(value) -> str:
    return "" if value is None else f"{value:.6g}"


def _csv(header, rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _tables(comp) -> tuple[str, str]:
    group = {m: i + 1 for i, g in enumerate(comp.groups) for m in g}
    rank = _csv(("model", "group", "accuracy"),
                [(m, group[m], _pct(comp.accuracy[m])) for g in comp.groups for m in g])
    pairs = _csv(PAIR_COLUMNS, [(p.a, p.b, _pct(p.diff), _pct(p.low), _pct(p.high), _num(p.p),
                                 _num(p.p_holm), p.test, p.n, _num(p.mcnemar_p),
                                 _num(p.seeds_p), int(p.significant)) for p in comp.pairs])
    return rank, pairs


def _markdown(comp) -> list[str]:
    title = f"#### {DATASET_LABELS.get(comp.dataset, comp.dataset)}: {comp.label}"
    if not comp.groups:
        return [title, ""] + [f"- {n}" for n in comp.notes] + [""]
    best = comp.groups[0][0]
    versus = {frozenset((p.a, p.b)): p for p in comp.pairs}
    lines = [title, "", f"Paired over {comp.unit}; groups: not significantly different from the group's "
             "best (p < 0.05, Holm).", "",
             "| group | model | accuracy (%) | vs best: diff (95 % CI) | p (Holm) |",
             "|---:|:---|---:|---:|---:|"]
    for i, g in enumerate(comp.groups, 1):
        for m in g:
            p = versus.get(frozenset((best, m)))
            gap = ("–", "–")
            if p is not None:
                sign = -1 if p.a == best else 1  # shown as model minus best
                low, high = sorted((sign * p.low, sign * p.high))
                gap = (f"{100 * sign * p.diff:+.1f} ({100 * low:+.1f}, {100 * high:+.1f})",
                       f"{p.p_holm:.3g}")
            lines.append(f"| {i} | {m} | {100 * comp.accuracy[m]:.1f} | {gap[0]} | {gap[1]} |")
    return lines + [""] + [f"- {n}" for n in comp.notes]


def which_model_section(datasets, results_dir, runs_dir, tables_dir: Path) -> tuple[list[str],
                                                                                   list[Path]]:
    """Markdown lines of the section and the CSV files written (none without 2+ models)."""
    from embedcyto.compare import compare_dataset

    lines, written = [], []
    for dataset in dataset_order(datasets):
        try:
            comparisons = compare_dataset(dataset, results_dir, runs_dir)
        except ReportError as err:
            if "nothing to compare" not in str(err):
                lines += [f"{DATASET_LABELS.get(dataset, dataset)}: not compared ({err})", ""]
            continue
        lines += [f"### Which model? {DATASET_LABELS.get(dataset, dataset)}", ""]
        for comp in comparisons:
            lines += _markdown(comp)
            if not comp.groups:
                continue
            rank, pairs = _tables(comp)
            for name, text in ((f"rank_{comp.stem}", rank), (f"pairs_{comp.stem}", pairs)):
                path = tables_dir / f"{name}.csv"
                path.write_text(text, encoding="utf-8")
                written.append(path)
            lines += [f"CSV: [ranking](tables/rank_{comp.stem}.csv), "
                      f"[pairs](tables/pairs_{comp.stem}.csv)", ""]
    return lines, written
