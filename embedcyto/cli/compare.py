"""``embedcyto compare``: which model is really better on a dataset, with paired tests."""

from __future__ import annotations

import click

from embedcyto.cli._common import results_option, runs_option


@click.command("compare")
@click.option("--dataset", required=True, help="Dataset name (as in the results).")
@click.option("--method", default=None,
              help="Only this method (linear, knn, study_head, simpleshot, protonet, lora).")
@click.option("--shots", default=None, type=click.IntRange(min=1),
              help="Only this number of shots per class.")
@results_option
@runs_option
@click.option("--seed", default=0, show_default=True, help="Seed of the paired bootstrap.")
def compare(dataset, method, shots, results_dir, runs_dir, seed) -> None:
    """Rank the models of a dataset and test every pair (paired, Holm-corrected).

    Full-data probes and LoRA runs are paired over test images (bootstrap, with McNemar's exact
    test and a sign-flip test over seeds beside it); few-shot probes over episodes (paired t).
    Models in one group are not significantly different (p < 0.05 after Holm) from the best
    model of the group; '*' marks significant pairs.
    """
    from embedcyto.cli.main import cli_wording
    from embedcyto.compare import compare_dataset, format_comparison
    from embedcyto.folders import output_folder

    for comp in compare_dataset(dataset, output_folder("results", results_dir),
                                output_folder("runs", runs_dir), method, shots, seed):
        click.echo(cli_wording(format_comparison(comp), click.get_current_context().command)
                   + "\n")
