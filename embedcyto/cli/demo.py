"""``embedcyto demo``: try embedcyto end to end on a small generated dataset, no download."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click


def _run(out: Path, per_class: int, seed: int) -> None:
    from embedcyto.datasets import check_dataset
    from embedcyto.datasets.fixtures import make_fixture

    root = make_fixture("sipakmed", out / "sipakmed", per_class=per_class, seed=seed)
    click.echo(f"wrote a SIPaKMeD-like dataset ({per_class} cells per class) to {root}")
    report = check_dataset("sipakmed", root, split_dir=out / "splits" / "sipakmed", seed=seed)
    for line in report.lines():
        click.echo(line)
    click.echo("the full demo (extract, probe, LoRA, report) will follow in a later version")


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Keep the demo's files in this folder (default: a temporary folder).")
@click.option("--per-class", type=click.IntRange(3, 200), default=12, show_default=True,
              help="Generated cells per class.")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out, per_class, seed) -> None:
    """Generate a small SIPaKMeD-like dataset and check it (no download needed)."""
    if out is not None:
        _run(Path(out), per_class, seed)
        return
    with tempfile.TemporaryDirectory(prefix="embedcyto-demo-") as tmp:
        _run(Path(tmp), per_class, seed)
