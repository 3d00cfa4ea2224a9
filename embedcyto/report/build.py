"""``build_report``: probe results and LoRA run folders → Markdown, CSV tables and PNG figures.

Output folder layout::

    OUT/report.md                         every table, links to the CSVs and figures
    OUT/tables/<name>.csv                 one CSV per table (percent; mean, std, n per column)
    OUT/figures/fewshot_<dataset>.png     accuracy vs shots (Experiment 2)
    OUT/figures/fractions_<dataset>.png   accuracy vs training fraction per level (Experiment 3)

Tables: the study's Table 1 (models × datasets, average row and column) for accuracy and
balanced accuracy and each full-data method found (the probe registry's full-data rows); the
per-level table of each hierarchical dataset (HiCervix with HierSwin's published row); the
few-shot table of each dataset (shots × model and method); the fraction table of each
(dataset, model) trained with LoRA on fractions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from embedcyto.probes import registry
from embedcyto.report import aggregate as agg
from embedcyto.report.figures import (
    FigureSummary,
    plot_fraction_curves,
    plot_shot_curves,
    stamp_warning,
)
from embedcyto.report.records import (
    GENERATED_DATA,
    LEVELS,
    LORA,
    VAL_ACCURACY,
    ReportError,
    load_lora_records,
    load_probe_records,
)
from embedcyto.report.render import to_csv, to_markdown
from embedcyto.report.diagnostics import diagnostics_section
from embedcyto.report.which import which_model_section

TABLE_METRICS = ("accuracy", "balanced_accuracy")
PAPER_METHODS = ("linear", "study_head")  # the probes comparable to the study's classifier


@dataclass
class ReportResult:
    """What :func:`build_report` wrote and from what."""

    out_dir: Path
    markdown: Path
    tables: dict[str, agg.Table] = field(default_factory=dict)
    csv_files: dict[str, Path] = field(default_factory=dict)
    figures: list[FigureSummary] = field(default_factory=list)
    n_probe_rows: int = 0
    n_lora_runs: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)


def plan_tables(records: list[dict], paper_table1=None, splits=("test",)) -> dict[str, agg.Table]:
    """Every table the records support, by file stem, in report order (pure).

    ``paper_table1`` (model -> dataset -> percent) adds the published Table 1 rows under the
    accuracy tables of the linear classifiers. ``splits`` including "val" adds Table 1 on the
    validation split (the split the study reports) after the test tables, the headline.
    """
    from embedcyto.metrics import HIERSWIN
    from embedcyto.report.paper import with_paper_rows

    tables: dict[str, agg.Table] = {}
    methods = {r["method"] for r in records if r["shots"] is None and r["fraction"] is None}
    full_data = [m for m in registry.method_names(registry.FULL_DATA) if m in methods]
    for method in full_data:
        for metric in TABLE_METRICS:
            table = agg.model_dataset_table(records, method, metric)
            if paper_table1 and metric == "accuracy" and method in PAPER_METHODS:
                table = with_paper_rows(table, paper_table1)
            tables[f"table1_{metric}_{method}"] = table
    if "val" in splits:
        for method in full_data:
            table = _val_table(records, method)
            if paper_table1 and method in PAPER_METHODS:
                table = with_paper_rows(table, paper_table1)
            tables[f"table1_val_accuracy_{method}"] = table
    for dataset in agg.dataset_order({r["dataset"] for r in records if r.get("levels")}):
        reference = HIERSWIN if dataset == "hicervix" else None
        for method in full_data:
            table = agg.levels_table(records, method, dataset, reference)
            if any(name != "HierSwin (published)" for name, _ in table.rows):
                tables[f"{dataset}_levels_{method}"] = table
    few = {r["dataset"] for r in records if r["shots"] is not None and r["fraction"] is None}
    for dataset in agg.dataset_order(few):
        tables[f"fewshot_{dataset}"] = agg.shots_table(records, dataset)
    fractions = {(r["dataset"], r["model"]) for r in records
                 if r["method"] == LORA and r["fraction"] is not None}
    for dataset, model in sorted(fractions):
        reference = HIERSWIN if dataset == "hicervix" else None
        tables[f"fractions_{dataset}_{model}"] = agg.fraction_table(records, dataset, model,
                                                                    reference)
    return tables


def random_weights_warning(records: list[dict]) -> str | None:
    """The warning every table and figure built from random-weight models carries, or None."""
    random = _random_models(records)
    if not random:
        return None
    return (f"random-weight models ({', '.join(random)}): their numbers say nothing about any "
            "real model")


def generated_data_warning(records: list[dict]) -> str | None:
    """The warning every table and figure with numbers from generated images carries, or None
    (whatever the weights: a real model scored on drawn cells says nothing about real ones)."""
    generated = agg.dataset_order({r["dataset"] for r in records if r.get(GENERATED_DATA)})
    if not generated:
        return None
    return (f"generated data ({', '.join(generated)}): computed on images drawn by a program, "
            "not real cells; their numbers say nothing about any real dataset")


def data_warning(records: list[dict]) -> str | None:
    """Every warning that applies to ``records`` (random weights, generated data), or None."""
    found = [w for w in (random_weights_warning(records), generated_data_warning(records)) if w]
    return "; ".join(found) or None


def _val_table(records: list[dict], method: str) -> agg.Table:
    table = agg.model_dataset_table(records, method, VAL_ACCURACY)
    missing = any(r[VAL_ACCURACY] is None for r in records
                  if r["method"] == method and r["shots"] is None and r["fraction"] is None)
    if not missing:
        return table
    note = (table.note + " Empty cells: rows written before embedcyto recorded validation "
            "accuracy; recompute them (the probe stage's rerun option).")
    return agg.Table(table.title, table.row_header, table.columns, table.rows, note=note)


def paper_lines(models, dataset: str, paper_table1) -> list[agg.Reference]:
    """The study's published Table 1 value of each drawn model on ``dataset``, as lines."""
    table = paper_table1 or {}
    return [agg.Reference(f"{m} linear (paper, validation)", m, table[m][dataset] / 100,
                          published=True)
            for m in models if dataset in table.get(m, {})]


def draw_figures(records: list[dict], figures_dir: Path,
                 paper_table1=None) -> list[FigureSummary]:
    """The Experiment 2 figure of every dataset with few-shot results (with the study's
    published full-data value of each model, where shipped), and the Experiment 3 figure of
    every dataset with fraction runs; each carries the warnings (random weights, generated data)
    of the records it draws."""
    from embedcyto.metrics import HIERSWIN

    out = []
    few = {r["dataset"] for r in records if r["shots"] is not None and r["fraction"] is None}
    for dataset in agg.dataset_order(few):
        curves, refs = agg.shot_curves(records, dataset)
        refs = list(refs) + paper_lines(dict.fromkeys(c.model for c in curves), dataset,
                                        paper_table1)
        label = agg.DATASET_LABELS.get(dataset, dataset)
        drawn = [r for r in records if r["dataset"] == dataset]
        out.append(plot_shot_curves(curves, refs, f"{label}: accuracy vs shots per class",
                                    figures_dir / f"fewshot_{dataset}.png",
                                    warning=data_warning(drawn)))
    fractions = {r["dataset"] for r in records if r["method"] == LORA
                 and r["fraction"] is not None}
    for dataset in agg.dataset_order(fractions):
        chosen = [r for r in records if r["dataset"] == dataset]
        has_levels = any(r.get("levels") for r in chosen if r["fraction"] is not None)
        if has_levels:
            by_level = {lv: agg.fraction_curves(chosen, dataset, lv) for lv in LEVELS}
        else:
            by_level = {"accuracy": agg.fraction_curves(chosen, dataset, None)}
        reference = HIERSWIN if dataset == "hicervix" and has_levels else None
        label = agg.DATASET_LABELS.get(dataset, dataset)
        out.append(plot_fraction_curves(by_level, reference,
                                        f"{label}: LoRA accuracy vs training data used",
                                        figures_dir / f"fractions_{dataset}.png",
                                        warning=data_warning(chosen)))
    return out


def _random_models(records: list[dict]) -> list[str]:
    from embedcyto.backbones.cards import get_card
    from embedcyto.errors import BackboneError

    found = []
    for model in agg.model_order({r["model"] for r in records}):
        try:
            if get_card(model.split(agg.VARIANT_MARK, 1)[0].split("+", 1)[0]).random:
                found.append(model)
        except BackboneError:
            continue
    return found


def _sources_line() -> str:
    from embedcyto.report.paper import load_paper_reference

    paper = load_paper_reference()
    shipped = "Table 1 rows marked (paper)" if paper.table1 else (
        "Table 1 of the study is not shipped (no citable copy was available), so no "
        "(paper) rows appear")
    return (f"Published values: HierSwin rows from {paper.hierswin_source}. {shipped}. "
            f"Study: {paper.source}.")


def _markdown(result: ReportResult, results_dir, runs_dir, records: list[dict]) -> str:
    source = (f"From {result.n_probe_rows} probe result rows in `{results_dir}` and "
              f"{result.n_lora_runs} finished LoRA runs in `{runs_dir}`. Numbers are percent, "
              "mean ± std over seeds.")
    lines = ["# embedcyto report", "", source, ""]
    lines += [_sources_line(), ""]
    random = _random_models(records)
    if random:
        lines += [(f"**Random-weight models ({', '.join(random)}): their numbers say nothing "
                   "about any real model.**"), ""]
    generated = generated_data_warning(records)
    if generated:
        lines += [f"**{generated[0].upper()}{generated[1:]}.**", ""]
    if result.notes:
        lines += [f"- {note}" for note in result.notes] + [""]
    if result.skipped:
        lines += ["Left out:", ""] + [f"- `{p}`: {why}" for p, why in result.skipped] + [""]
    maps = [f for f in result.figures if f.path.name.startswith("embedding_")]
    if maps:  # people look at the features before reading tables
        lines += ["## The features at a glance", ""] + _images(result, maps)
    for name, table in result.tables.items():
        lines += [to_markdown(table), f"CSV: [tables/{name}.csv](tables/{name}.csv)", ""]
    lines += result.sections
    others = [f for f in result.figures if f not in maps]
    if others:
        lines += ["## Figures", ""] + _images(result, others)
    return "\n".join(lines)


def _images(result: ReportResult, figures) -> list[str]:
    return [line for fig in figures for line in
            (f"![{fig.title}]({fig.path.relative_to(result.out_dir).as_posix()})", "")]


def build_report(results_dir=None, runs_dir=None, out_dir=None, *,
                 splits=("test",)) -> ReportResult:
    """Read every probe row and finished LoRA run; write tables, figures and ``report.md``.

    Args:
        results_dir: folder of the probe stage's ``<dataset>.jsonl`` files (default
            :data:`embedcyto.folders.DEFAULT_RESULTS_DIR`).
        runs_dir: root of the LoRA run folders (holding ``lora/``); may not exist (default
            :data:`embedcyto.folders.DEFAULT_RUNS_DIR`).
        out_dir: where the report goes (created; files of the same name are replaced; default
            :data:`embedcyto.folders.DEFAULT_REPORT_DIR`).
        splits: "test" (always, the headline); with "val", Table 1 on the validation split
            too, for comparison with the study's Table 1 (validation accuracy).

    Results of one model and method made with different settings are separate rows, named by
    the settings that differ (``report.md`` says so).

    Raises:
        ReportError: no results at all, an unreadable file, or a seed repeated in one cell.
    """
    from embedcyto.folders import output_folder

    results_dir = output_folder("results", results_dir)
    runs_dir = output_folder("runs", runs_dir)
    out_dir = output_folder("report", out_dir)
    probe = load_probe_records(results_dir)
    lora = load_lora_records(runs_dir)
    records, notes = agg.split_variants(probe.records + lora.records)
    if not records:
        raise ReportError(f"no results found: no probe rows in {results_dir} and no finished "
                          f"LoRA run in {runs_dir}; run `embedcyto probe` or `embedcyto lora` "
                          "first, or point `results_dir=` / `runs_dir=` at their folders")
    out = Path(out_dir)
    result = ReportResult(out, out / "report.md", n_probe_rows=len(probe.records),
                          n_lora_runs=len(lora.records), skipped=probe.skipped + lora.skipped,
                          notes=notes)
    from embedcyto.report.paper import load_paper_reference

    unknown = set(splits) - {"test", "val"}
    if unknown:
        raise ReportError(f"unknown split(s) {sorted(unknown)}: the report shows 'test' and "
                          "'val'")
    result.tables = plan_tables(records, load_paper_reference().table1, splits)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    for name, table in result.tables.items():
        path = out / "tables" / f"{name}.csv"
        path.write_text(to_csv(table), encoding="utf-8")
        result.csv_files[name] = path
    result.figures = draw_figures(records, out / "figures", load_paper_reference().table1)
    which, written = which_model_section({r["dataset"] for r in records}, results_dir,
                                         runs_dir, out / "tables")
    result.csv_files.update({p.stem: p for p in written})
    diagnostics, written, figures, skipped = diagnostics_section(results_dir, runs_dir, out)
    result.sections = ((["## Which model?", ""] + which if which else []) +
                       (["## Per class and calibration", ""] + diagnostics if diagnostics else []))
    result.csv_files.update({p.stem: p for p in written})
    warning = data_warning(records)
    result.figures += [stamp_warning(f, warning) for f in figures] if warning else figures
    result.skipped += skipped
    result.markdown.write_text(_markdown(result, results_dir, runs_dir, records),
                               encoding="utf-8")
    return result
