"""``embedcyto models``: list the model cards; show one and where its weights are looked for."""

from __future__ import annotations

import json
from pathlib import Path

import click

from embedcyto.cli._common import echo_columns

_WEIGHTS_DIR_HELP = (
    "Local weights folder holding <model name>/<weights file> (default: $EMBEDCYTO_WEIGHTS)."
)


def _kind(card) -> str:
    if card.random:
        return "RANDOM (demo)"
    return "study" if card.study else "extra"


@click.group()
def models() -> None:
    """The backbones embedcyto can build (model cards)."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the cards as one JSON list.")
def list_(as_json: bool) -> None:
    """One line per model: name, library, embedding size, input size, access, kind."""
    from embedcyto.backbones.cards import list_cards

    cards = list_cards()
    if as_json:
        click.echo(json.dumps([c.to_dict() for c in cards], indent=2))
        return
    rows = [("NAME", "FAMILY", "EMBED", "INPUT", "GATED", "KIND", "LICENSE", "DESCRIPTION")]
    for c in cards:
        rows.append(
            (
                c.name,
                c.family,
                str(c.embed_dim),
                str(c.input_size),
                "yes" if c.gated else "no",
                _kind(c),
                c.license,
                c.description,
            )
        )
    echo_columns(rows)


@models.command("show")
@click.argument("name")
@click.option(
    "--weights-dir",
    type=click.Path(path_type=Path),
    envvar="EMBEDCYTO_WEIGHTS",
    default=None,
    help=_WEIGHTS_DIR_HELP,
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path),
    default=None,
    help="Explicit weights file or folder.",
)
@click.option("--json", "as_json", is_flag=True, help="Print only the card as JSON.")
def show(name: str, weights_dir: Path | None, weights: Path | None, as_json: bool) -> None:
    """Show the card NAME and where its weights would be found (nothing is downloaded)."""
    from embedcyto.backbones.cards import get_card
    from embedcyto.backbones.weights import (
        resolve_weights,
        search_plan,
        weights_instructions,
    )
    from embedcyto.errors import WeightsNotFoundError

    card = get_card(name)
    click.echo(card.to_json())
    if as_json:
        return
    click.echo("\nweights are looked for in this order:")
    for i, place in enumerate(search_plan(card, weights, weights_dir=weights_dir), 1):
        click.echo(f"  {i}. {place}")
    if card.random:
        return
    try:
        found = resolve_weights(card, weights, weights_dir=weights_dir, allow_download=False)
        click.echo(f"found: {found}")
    except WeightsNotFoundError:
        click.echo("found: nothing on this machine. To get them:")
        for step in weights_instructions(card, weights_dir):
            click.echo(f"  - {step}")
