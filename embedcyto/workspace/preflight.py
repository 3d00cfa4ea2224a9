"""Everything a run needs, checked before any of it starts.

A run over four datasets and five models that stops on the third dataset because a root was
mistyped wastes hours; so the roots and every model's weights are looked for first, and all that
is missing is reported in one message, each item with how to provide it.
"""

from __future__ import annotations

from collections.abc import Sequence

from embedcyto.errors import EmbedcytoError
from embedcyto.workspace.config import DatasetEntry, Workspace
from embedcyto.workspace.datasets import entry_root


class MissingInputsError(EmbedcytoError):
    """Dataset roots or model weights a run needs are not there (the message lists them all)."""


def missing_roots(entries: Sequence[DatasetEntry], workspace: Workspace | None) -> list[str]:
    """One line per dataset whose root is missing or empty, with the layout it must hold."""
    from embedcyto.datasets.registry import get_adapter

    out = []
    for entry in entries:
        root = entry_root(entry, workspace)
        if root.is_dir() and any(root.iterdir()):
            continue
        state = "is empty" if root.is_dir() else "does not exist"
        out.append(f"dataset {entry.name}: root {root} {state}; it must hold "
                   f"{get_adapter(entry.layout).layout} (fix root = in the workspace, or "
                   f"`embedcyto datasets add {entry.name}` with `layout={entry.layout}` and "
                   "`root=PATH`)")
    return out


def missing_weights(models: Sequence[str], weights_dir=None, *, weights=None,
                    allow_download: bool = False, offer_weights_path: bool = True) -> list[str]:
    """One entry per model whose weights are nowhere on this machine: the places looked and
    how to get them. ``offer_weights_path=False`` for callers that take no weights path (the
    recipes), whose steps then only name the weights folder and the hub."""
    from embedcyto.backbones import get_card
    from embedcyto.backbones.weights import (
        NOT_GIVEN,
        default_weights_dir,
        resolve_weights,
        weights_instructions,
    )
    from embedcyto.errors import BackboneError

    out = []
    for model in models:
        card = get_card(model)
        if card.random and weights is None:
            continue
        try:
            resolve_weights(card, weights, weights_dir=weights_dir, allow_download=allow_download)
        except BackboneError as err:
            wdir = weights_dir or default_weights_dir()
            looked = "\n".join(f"      - {place}" for place in getattr(err, "looked", ())
                               if place != NOT_GIVEN)
            steps = "\n".join(f"      - {s}" for s in weights_instructions(
                card, wdir, offer_weights_path=offer_weights_path))
            head = str(err).splitlines()[0].removesuffix(" Looked in:")
            where = f" Looked in:\n{looked}" if looked else ""
            out.append(f"weights of {model} ({card.license}{', gated' if card.gated else ''}): "
                       f"{head}{where}\n    To get them:\n{steps}")
    return out


def check_inputs(what: str, entries: Sequence[DatasetEntry], workspace: Workspace | None,
                 models: Sequence[str], weights_dir=None, *, weights=None,
                 allow_download: bool = False) -> None:
    """Raise one :class:`MissingInputsError` listing every missing root and weights file."""
    weights_missing = missing_weights(models, weights_dir, weights=weights,
                                      allow_download=allow_download)
    missing = missing_roots(entries, workspace) + weights_missing
    if missing:
        lines = [f"{what}: cannot start, {len(missing)} input(s) missing (nothing was run):"]
        lines += [f"  {i}. {m}" for i, m in enumerate(missing, 1)]
        if weights_missing and workspace is not None:
            lines.append("A weights folder can also be set once in the workspace: "
                         "weights_dir = \"PATH\" under [workspace] (docs/workspace.md).")
        raise MissingInputsError("\n".join(lines))
