"""Results of one model and method made with different settings: separate, named rows.

A report never averages across settings and never refuses to be written because two settings
meet in one table: :func:`split_variants` renames the model of each such record to the model
plus the settings that tell the variants apart (``clip [lr 0.02]``), so every table and figure
shows them as rows of their own, and says so in a note. Pure functions, like
:mod:`embedcyto.report.aggregate`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from embedcyto.configs import MISSING, flatten

#: Separates a model's name from the settings that name one of its variants.
VARIANT_MARK = " ["


def _setting(value) -> str:
    text = "default" if value is MISSING else json.dumps(value, default=str)
    return text.strip('"')


def split_variants(records: Sequence[Mapping]) -> tuple[list[dict], list[str]]:
    """Results of one (dataset, model, method) made with different settings, as separate rows.

    When a model's results of one method were made with two or more sets of settings (another
    learning rate, another LoRA rank, other probe options), each set becomes a row of its own,
    named by the settings that differ: ``clip [lr 0.02]``. Nothing is averaged across settings
    and nothing is refused. Fraction runs (Experiment 3) and the other runs (shots and all
    data, Experiment 2) fill different tables, so each is compared only with its own kind.

    Returns:
        The records (``model`` renamed where needed) and one note per split group, saying so.
    """
    def key(r: Mapping) -> tuple:
        return r["dataset"], r["model"], r["method"], r["fraction"] is not None

    variants: dict[tuple, set[str]] = {}
    for r in records:
        variants.setdefault(key(r), set()).add(r["variant"])
    names, notes = {}, []
    for group, found in sorted(variants.items()):
        if len(found) < 2:
            continue
        flat = {v: flatten(json.loads(v)) for v in found}
        keys = sorted({k for f in flat.values() for k in f
                       if len({_setting(g.get(k, MISSING)) for g in flat.values()}) > 1})
        for v, f in flat.items():
            label = ", ".join(f"{k} {_setting(f.get(k, MISSING))}" for k in keys)
            names[(group, v)] = f"{group[1]}{VARIANT_MARK}{label}]"
        notes.append(f"{group[0]}, {group[1]}, {group[2]}"
                     f"{' on fractions' if group[3] else ''}: results of {len(found)} "
                     "different settings, shown as separate rows (they differ in "
                     f"{', '.join(keys)}).")
    out = [dict(r, model=names.get((key(r), r["variant"]), r["model"])) for r in records]
    return out, notes
