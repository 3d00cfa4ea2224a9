"""Records → table and curve data: mean ± std over seeds, averages, the study's layouts.

Pure functions: lists of records (see :mod:`embedcyto.report.records`) in, :class:`Table` and
:class:`Curve` values out. Nothing here reads files or draws; rendering lives in
:mod:`embedcyto.report.render` and :mod:`embedcyto.report.figures`.

Honesty rules:
    * a cell averages the seeds of exactly one (dataset, model, method, shots, fraction) and one
      variant of settings: results made with different settings become different rows
      (:func:`embedcyto.report.variants.split_variants`, named by the settings that differ),
      never one blended number;
      two records of one seed in a cell are an error;
    * an average over datasets (or models) is given only when every averaged cell exists; its
      std is the std over seeds of the per-seed averages, which needs the same seeds in every
      cell, otherwise the average is shown without a std.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from embedcyto.configs import what_differs
from embedcyto.probes import registry
from embedcyto.report.records import LEVELS, LORA, STUDY25, ReportError
from embedcyto.report.variants import VARIANT_MARK, split_variants

DATASET_ORDER = ("bcfc", "mlcc", "sipakmed", "hicervix")
DATASET_LABELS = {"bcfc": "BCFC", "mlcc": "MLCC", "sipakmed": "SIPaKMeD", "hicervix": "HiCervix"}
METRIC_LABELS = {**registry.HEADLINE_METRICS, "val_accuracy": "validation accuracy"}
LEVEL_LABELS = {"level_1": "level 1", "level_2": "level 2", "level_3": "level 3",
                "average": "average", STUDY25: "study 25-class (flat)"}
STUDY25_NOTE = ("'study 25-class (flat)': the Dausort et al. accuracy on their 25 classes "
                "(level-3 name, else level-2 name; cells labelled only AGC left out), from the "
                "same predictions; 'average' is the mean of the three official levels.")
AVERAGE = "average"
ALL = "all"
#: The zero-shot method: no training image, shown as shots = 0 in few-shot tables and figures.
ZERO_SHOT = "zeroshot"


def method_label(method: str) -> str:
    """How tables and figures name a method (the probe registry's display name, or LoRA)."""
    return "LoRA" if method == LORA else registry.display_name(method)


def few_shot_methods() -> tuple[str, ...]:
    """The episodic probe methods, in registry order."""
    return registry.method_names(registry.EPISODIC)


@dataclass(frozen=True)
class Cell:
    """One table entry: the per-seed values and their mean and std (fractions, not percent).

    ``std`` is None where no honest std exists (a reference number, or an average over cells
    with different seeds).
    """

    values: tuple[tuple[int | None, float], ...]
    mean: float
    std: float | None

    @property
    def n(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Table:
    """Rows × columns of cells (None where nothing was measured), with a title and a note."""

    title: str
    row_header: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, tuple[Cell | None, ...]], ...]
    note: str = ""

    def cell(self, row: str, column: str) -> Cell | None:
        """The cell at (row name, column name)."""
        names = [name for name, _ in self.rows]
        if row not in names or column not in self.columns:
            raise KeyError(f"no cell ({row!r}, {column!r}) in table {self.title!r}")
        return self.rows[names.index(row)][1][self.columns.index(column)]


@dataclass(frozen=True)
class Curve:
    """One line of a figure: x positions and mean ± std over seeds at each."""

    label: str
    model: str
    method: str
    x: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class Reference:
    """A horizontal line (a model's full-data linear probe, or a published number)."""

    label: str
    model: str | None
    value: float
    std: float | None = None
    published: bool = False  # a number from a paper, drawn apart from the user's own


def make_cell(values: Iterable[tuple[int | None, float]]) -> Cell:
    """Mean and std (``ddof=1``; exactly 0 for identical values) of per-seed values.

    One value has no std (None), so a single seed is never shown as "± 0".
    """
    from embedcyto.metrics import mean_std

    pairs = tuple(sorted(values, key=lambda p: (p[0] is None, p[0] or 0)))
    if not pairs:
        raise ReportError("a table cell needs at least one value")
    mean, std = mean_std([v for _, v in pairs])
    return Cell(pairs, mean, std if len(pairs) > 1 else None)


def reference_cell(value: float) -> Cell:
    """A single published number: no seeds, no std."""
    return Cell(((None, float(value)),), float(value), None)


def average_cell(cells: Sequence[Cell | None]) -> Cell | None:
    """The average of cells: None if any is missing; per-seed when the seeds agree."""
    if not cells or any(c is None for c in cells):
        return None
    seeds = [tuple(s for s, _ in c.values) for c in cells]
    same = len(set(seeds)) == 1 and None not in seeds[0] and len(set(seeds[0])) == len(seeds[0])
    if same:
        per_seed = [(seed, sum(dict(c.values)[seed] for c in cells) / len(cells))
                    for seed in seeds[0]]
        return make_cell(per_seed)
    mean = sum(c.mean for c in cells) / len(cells)
    return Cell((), mean, None)


def _order(names: Iterable[str], preferred: Sequence[str]) -> list[str]:
    names = set(names)
    return [n for n in preferred if n in names] + sorted(names - set(preferred))


def model_order(names: Iterable[str]) -> list[str]:
    """Models in the card list's order (study models first), unknown names after; a row of
    other settings (``clip [lr 0.02]``, see :func:`split_variants`) right after its model."""
    from embedcyto.backbones.cards import list_cards

    names = set(names)
    bases = _order({n.split(VARIANT_MARK, 1)[0] for n in names}, [c.name for c in list_cards()])
    return [n for base in bases for n in sorted(names)
            if n.split(VARIANT_MARK, 1)[0] == base]


def dataset_order(names: Iterable[str]) -> list[str]:
    """The study's datasets in its order (BCFC, MLCC, SIPaKMeD, HiCervix), then others."""
    return _order(names, DATASET_ORDER)


def _group_key(record: Mapping) -> tuple:
    return (record["dataset"], record["model"], record["method"], record["shots"],
            record["fraction"])


def group_seeds(records: Iterable[Mapping]) -> dict[tuple, list[Mapping]]:
    """Records grouped by (dataset, model, method, shots, fraction), checked for honesty.

    Raises:
        ReportError: two variants of settings in one group (:func:`split_variants` separates
            them), or one seed twice.
    """
    groups: dict[tuple, list[Mapping]] = {}
    for record in records:
        groups.setdefault(_group_key(record), []).append(record)
    for key, members in groups.items():
        variants = sorted({m["variant"] for m in members})
        if len(variants) > 1:
            raise ReportError(
                f"{'/'.join(str(k) for k in key[:3])} (shots {key[3]}, fraction {key[4]}) has "
                "results made with different settings ("
                f"{what_differs(json.loads(variants[0]), json.loads(variants[1]))}): pass the "
                "records through split_variants first, which shows each as its own row")
        seeds = [m["seed"] for m in members]
        if len(set(seeds)) != len(seeds):
            raise ReportError(f"{'/'.join(str(k) for k in key[:3])} holds seed(s) twice "
                              f"({sorted(seeds, key=str)}); remove the duplicate rows")
    return groups


def _value(record: Mapping, metric: str, level: str | None) -> float | None:
    if level is None:
        return record[metric]
    levels = record.get("levels") or {}
    return levels.get(level)


def _cell(members: Sequence[Mapping] | None, metric: str = "accuracy",
          level: str | None = None) -> Cell | None:
    if not members:
        return None
    values = [(m["seed"], _value(m, metric, level)) for m in members]
    values = [(s, v) for s, v in values if v is not None]
    return make_cell(values) if values else None


def model_dataset_table(records: Sequence[Mapping], method: str = "linear",
                        metric: str = "accuracy") -> Table:
    """Table 1 of the study: models × datasets, mean ± std over seeds, average row and column.

    Only full-data results (no shots, no fraction) of ``method`` are used.
    """
    chosen = [r for r in records if r["method"] == method and r["shots"] is None
              and r["fraction"] is None]
    groups = group_seeds(chosen)
    models = model_order({r["model"] for r in chosen})
    datasets = dataset_order({r["dataset"] for r in chosen})
    body = [[_cell(groups.get((d, m, method, None, None)), metric) for d in datasets]
            for m in models]
    rows = [(m, tuple(cells + [average_cell(cells)])) for m, cells in zip(models, body)]
    if models:
        columns = [average_cell([body[i][j] for i in range(len(models))])
                   for j in range(len(datasets))]
        rows.append((AVERAGE, tuple(columns + [average_cell(columns)])))
    title = (f"{METRIC_LABELS.get(metric, metric).capitalize()} (%), "
             f"{method_label(method)} on frozen features, mean ± std over seeds")
    note = "An average is left empty when one of its cells is missing."
    if "hicervix" in datasets:
        note = ("HiCervix: the 26 annotated classes (per-level results in their own table). "
                + note)
    return Table(title, "model", tuple(datasets + [AVERAGE]), tuple(rows), note=note)


def levels_table(records: Sequence[Mapping], method: str = "linear",
                 dataset: str = "hicervix", reference: Mapping[str, float] | None = None,
                 reference_name: str = "HierSwin (published)") -> Table:
    """Per-level accuracy (level 1/2/3 and their average) of each model, with a reference row.

    ``reference`` is in percent as published (e.g. :data:`embedcyto.metrics.HIERSWIN`).
    """
    chosen = [r for r in records if r["method"] == method and r["dataset"] == dataset
              and r["shots"] is None and r["fraction"] is None and r.get("levels")]
    groups = group_seeds(chosen)
    columns = _level_columns(chosen)
    rows = [(m, tuple(_cell(groups[(dataset, m, method, None, None)], level=lv)
                      for lv in columns)) for m in model_order({r["model"] for r in chosen})]
    if reference:
        rows.append((reference_name, tuple(
            reference_cell(reference[lv] / 100) if lv in reference else None for lv in columns)))
    title = (f"{DATASET_LABELS.get(dataset, dataset)} accuracy (%) per level, "
             f"{method_label(method)}, mean ± std over seeds")
    note = ("Official per-level test subsets; coarse levels from fine probabilities summed up "
            "the tree.")
    return Table(title, "model", columns, tuple(rows),
                 note=note + (" " + STUDY25_NOTE if STUDY25 in columns else ""))


def _level_columns(records: Sequence[Mapping]) -> tuple[str, ...]:
    """The official levels, and the study's 25-class accuracy when a record has it."""
    extra = any(STUDY25 in (r.get("levels") or {}) for r in records)
    return LEVELS + ((STUDY25,) if extra else ())


def _shot_columns(records: Sequence[Mapping]) -> list:
    shots = sorted({r["shots"] for r in records if r["shots"] is not None})
    return shots + [ALL]


def _shot_key(method: str, column):
    """The ``shots`` of a row shown in a few-shot table column (zero-shot rows have none)."""
    if method == ZERO_SHOT:
        return None if column == 0 else "-"
    return None if column == ALL else column


def shots_table(records: Sequence[Mapping], dataset: str, metric: str = "accuracy",
                reference_method: str = "linear") -> Table:
    """Few-shot table of one dataset: for each model, LoRA and frozen few-shot rows over shots.

    The "all" column holds LoRA trained on the whole training split and, on its own row, the
    frozen ``reference_method`` (the Experiment 1 line).
    """
    wanted = (ZERO_SHOT, LORA, *few_shot_methods(), reference_method)
    chosen = [r for r in records if r["dataset"] == dataset and r["fraction"] is None
              and r["method"] in wanted]
    groups = group_seeds(chosen)
    columns = _shot_columns([r for r in chosen if r["method"] in (LORA, *few_shot_methods())])
    if any(r["method"] == ZERO_SHOT for r in chosen):
        columns = [0, *columns]  # zero-shot: no training image
    rows = []
    for model in model_order({r["model"] for r in chosen}):
        for method in wanted:
            cells = tuple(_cell(groups.get((dataset, model, method, _shot_key(method, k), None)),
                                metric) for k in columns)
            if any(c is not None for c in cells):
                rows.append((f"{model} · {method_label(method)}", cells))
    title = (f"{DATASET_LABELS.get(dataset, dataset)}: {METRIC_LABELS.get(metric, metric)} (%) "
             "vs shots per class, mean ± std over seeds")
    return Table(title, "model · method", tuple(str(c) for c in columns), tuple(rows),
                 note="Few-shot frozen rows: mean over episodes per seed. 'all': the whole "
                      "training split.")


def _fraction_label(value: float) -> str:
    return f"{value:g} %"


def fraction_table(records: Sequence[Mapping], dataset: str, model: str,
                   reference: Mapping[str, float] | None = None,
                   reference_name: str = "HierSwin (published)") -> Table:
    """LoRA on growing fractions of a dataset: fractions × levels (or accuracy without levels)."""
    chosen = [r for r in records if r["dataset"] == dataset and r["model"] == model
              and r["method"] == LORA and r["fraction"] is not None]
    groups = group_seeds(chosen)
    fractions = sorted({r["fraction"] for r in chosen})
    has_levels = any(r.get("levels") for r in chosen)
    columns = _level_columns(chosen) if has_levels else ("accuracy",)
    rows = []
    for f in fractions:
        members = groups[(dataset, model, LORA, None, f)]
        rows.append((_fraction_label(f), tuple(
            _cell(members, level=c) if has_levels else _cell(members) for c in columns)))
    if reference and has_levels:
        rows.append((reference_name, tuple(
            reference_cell(reference[c] / 100) if c in reference else None for c in columns)))
    title = (f"{DATASET_LABELS.get(dataset, dataset)}: {model} with LoRA on a fraction of the "
             "training data, accuracy (%) mean ± std over seeds")
    return Table(title, "fraction", tuple(columns), tuple(rows),
                 note=STUDY25_NOTE if STUDY25 in columns else "")


def _curve(groups, keys: Sequence[tuple], xs: Sequence[float], label: str, model: str,
           method: str, metric: str = "accuracy", level: str | None = None) -> Curve | None:
    points = [(x, _cell(groups.get(k), metric, level)) for x, k in zip(xs, keys)]
    points = [(x, c) for x, c in points if c is not None]
    if not points:
        return None
    return Curve(label, model, method, tuple(float(x) for x, _ in points),
                 tuple(c.mean for _, c in points), tuple(c.std or 0.0 for _, c in points))


def shot_curves(records: Sequence[Mapping], dataset: str, metric: str = "accuracy",
                reference_method: str = "linear") -> tuple[list[Curve], list[Reference]]:
    """Lines of the Experiment 2 figure: accuracy vs shots per model (LoRA and frozen few-shot),
    and each model's full-data frozen probe as a horizontal reference."""
    chosen = [r for r in records if r["dataset"] == dataset and r["fraction"] is None]
    groups = group_seeds(chosen)
    curves, refs = [], []
    for model in model_order({r["model"] for r in chosen}):
        for method in (LORA, *few_shot_methods()):
            shots = sorted({r["shots"] for r in chosen if r["model"] == model
                            and r["method"] == method and r["shots"] is not None})
            keys = [(dataset, model, method, k, None) for k in shots]
            curve = _curve(groups, keys, shots, f"{model} {method_label(method)}", model,
                           method, metric)
            if curve is not None:
                curves.append(curve)
        zero = _cell(groups.get((dataset, model, ZERO_SHOT, None, None)), metric)
        if zero is not None:  # one point at shots = 0
            curves.append(Curve(f"{model} {method_label(ZERO_SHOT)}", model, ZERO_SHOT, (0.0,),
                                (zero.mean,), (zero.std or 0.0,)))
        ref = _cell(groups.get((dataset, model, reference_method, None, None)), metric)
        if ref is not None:
            refs.append(Reference(f"{model} {method_label(reference_method)} (all data)",
                                  model, ref.mean, ref.std))
    return curves, refs


def fraction_curves(records: Sequence[Mapping], dataset: str,
                    level: str | None) -> list[Curve]:
    """Lines of the Experiment 3 figure for one level (None: plain accuracy): one per model."""
    chosen = [r for r in records if r["dataset"] == dataset and r["method"] == LORA
              and r["fraction"] is not None]
    groups = group_seeds(chosen)
    curves = []
    for model in model_order({r["model"] for r in chosen}):
        fractions = sorted({r["fraction"] for r in chosen if r["model"] == model})
        keys = [(dataset, model, LORA, None, f) for f in fractions]
        curve = _curve(groups, keys, fractions, f"{model} LoRA", model, LORA, level=level)
        if curve is not None:
            curves.append(curve)
    return curves
