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
        return "RANDOM-demo"
    return "study" if card.study else "extra"


@click.group()
def models() -> None:
    """The backbones embedcyto can build (model cards)."""


def _count(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def _present(card, weights_dir: Path | None) -> str:
    """Whether the weights are on this machine (weights folder or Hugging Face cache)."""
    from embedcyto.backbones.weights import resolve_weights
    from embedcyto.errors import BackboneError

    if card.random:
        return "random"
    try:
        resolve_weights(card, weights_dir=weights_dir, allow_download=False)
    except BackboneError:
        return "no"
    return "yes"


def _row(card, present: str) -> tuple[str, ...]:
    from embedcyto.backbones.cost import estimated_ms

    return (
        card.name, card.family, ",".join(card.domains) or "-", _count(card.params),
        str(card.embed_dim), str(card.input_size), "yes" if card.gated else "no", present,
        _kind(card), _ms(estimated_ms(card, "cpu")), _ms(estimated_ms(card, "gpu")),
        card.license.split(" (")[0],
    )


@models.command("list")
@click.option("--family", type=click.Choice(["open_clip", "timm", "transformers"]), default=None,
              help="Only cards built by this library.")
@click.option("--domain", type=click.Choice(["pathology", "cytology", "natural", "vision-language"]),
              default=None, help="Only cards of this domain.")
@click.option("--present", is_flag=True,
              help="Only cards whose weights are on this machine (weights folder or HF cache).")
@click.option("--weights-dir", type=click.Path(path_type=Path), envvar="EMBEDCYTO_WEIGHTS",
              default=None, help=_WEIGHTS_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the cards as one JSON list.")
def list_(family: str | None, domain: str | None, present: bool, weights_dir: Path | None,
          as_json: bool) -> None:
    """One line per model: size, embedding, access, local weights and estimated speed.

    PARAMS is the image encoder's parameter count. WEIGHTS says whether the weights are on this
    machine (nothing is downloaded). CPU_MS and GPU_MS are ESTIMATES of milliseconds per image
    from the model's FLOPs (2 CPU cores with bf16 units; one A100-class GPU in bf16), not
    measurements; see docs/models.md.
    """
    from embedcyto.backbones.cards import list_cards

    cards = [c for c in list_cards()
             if (family is None or c.family == family) and (domain is None or domain in c.domains)]
    found = {c.name: _present(c, weights_dir) for c in cards}
    if present:
        cards = [c for c in cards if found[c.name] == "yes"]
    if as_json:
        click.echo(json.dumps([c.to_dict() for c in cards], indent=2))
        return
    rows = [("NAME", "FAMILY", "DOMAIN", "PARAMS", "EMBED", "INPUT", "GATED", "WEIGHTS", "KIND",
             "CPU_MS~", "GPU_MS~", "LICENSE")]
    rows += [_row(c, found[c.name]) for c in cards]
    echo_columns(rows)
    if len(rows) == 1:
        click.echo("(no model matches these filters)")


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
    from embedcyto.cli.main import cli_wording
    from embedcyto.errors import WeightsNotFoundError

    here = click.get_current_context().command
    card = get_card(name)
    click.echo(card.to_json())
    if as_json:
        return
    click.echo(f"\nattention (for LoRA): {card.attention}")
    if card.gated:
        click.echo(f"gated: accept the terms at {card.page}, then `hf auth login`")
    click.echo("\nweights are looked for in this order:")
    for i, place in enumerate(search_plan(card, weights, weights_dir=weights_dir), 1):
        click.echo(f"  {i}. {cli_wording(place, here)}")
    if card.random:
        return
    try:
        found = resolve_weights(card, weights, weights_dir=weights_dir, allow_download=False)
        click.echo(f"found: {found}")
    except WeightsNotFoundError:
        click.echo("found: nothing on this machine. To get them:")
        for step in weights_instructions(card, weights_dir):
            click.echo(f"  - {cli_wording(step, here)}")


@models.command("add")
@click.argument("names", nargs=-1, required=True)
def add(names) -> None:
    """Add models to the workspace's default list (what `embedcyto extract` runs)."""
    from embedcyto.backbones.cards import get_card
    from embedcyto.workspace import save_workspace
    from embedcyto.workspace.current import current_workspace

    ws = current_workspace(required=True)
    for name in names:
        get_card(name)  # an unknown card is refused with the close names
    save_workspace(ws.with_models(names))
    click.echo(f"default models: {', '.join(ws.with_models(names).models)}")


@models.command("remove")
@click.argument("names", nargs=-1, required=True)
def remove(names) -> None:
    """Remove models from the workspace's default list (their stores stay)."""
    from embedcyto.workspace import save_workspace
    from embedcyto.workspace.current import current_workspace

    ws = current_workspace(required=True).without_models(names)
    save_workspace(ws)
    click.echo(f"default models: {', '.join(ws.models) or 'none'}")
