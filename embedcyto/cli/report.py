"""``embedcyto report``: tables and figures from probe results and LoRA run folders."""

from __future__ import annotations

import click

from embedcyto.cli._common import report_out_option, results_option, runs_option


def summary_lines(result) -> list[str]:
    """What was written, one line per file group (shared with ``embedcyto demo``)."""
    lines = [f"read {result.n_probe_rows} probe rows and {result.n_lora_runs} LoRA runs",
             f"report:  {result.markdown}",
             f"tables:  {len(result.csv_files)} CSV files in {result.out_dir / 'tables'}"]
    if result.figures:
        lines.append(f"figures: {', '.join(str(f.path) for f in result.figures)}")
    for path, why in result.skipped:
        lines.append(f"left out {path}: {why}")
    return lines


@click.command("report")
@results_option
@runs_option
@report_out_option
@click.option("--split", "splits", type=click.Choice(["test", "val"]), multiple=True,
              help="Also show Table 1 on the validation split (the split the study's Table 1 "
                   "reports): --split val. Test accuracy is always shown and stays the headline.")
def report(results_dir, runs_dir, out_dir, splits) -> None:
    """Write the study's tables (Markdown and CSV) and figures (PNG) from result files.

    Table 1 (models × datasets, accuracy and balanced accuracy, mean ± std over seeds, with
    averages) for each full-data probe; HiCervix per level beside HierSwin's published numbers;
    few-shot tables per dataset; LoRA on data fractions. Figures: accuracy vs shots per dataset
    with each model's linear-probe line; accuracy vs HiCervix fraction per level.
    """
    from embedcyto.report import build_report

    # unset folders: the workspace's (docs/workspace.md), else ./results/probe, ./runs, ./report
    result = build_report(results_dir, runs_dir, out_dir, splits=("test", *splits))
    for line in summary_lines(result):
        click.echo(line)
