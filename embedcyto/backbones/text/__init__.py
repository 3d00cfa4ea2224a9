"""Text towers of the vision-language cards: prompts in, embeddings in the image space out.

Only the image tower is needed to extract features; the text tower is built when class prompts
are embedded (zero-shot classification, text-aware probes, a LoRA head initialised from text).
Which tower a card has is data (``towers.json`` beside this module, keyed by card name), so the
cards themselves, and the identity of the stores made with them, are unchanged.

The tower is open_clip's own module (``TextTransformer`` for CLIP and QuiltNet, ``HFTextEncoder``
for BiomedCLIP's PubMedBERT), built from the same config open_clip uses and loaded strictly from
the non-``visual.`` keys of the card's checkpoint, so its output is what open_clip's
``encode_text`` returns. Tokenizers are offline-first: open_clip's BPE vocabulary ships inside
the package; a Hugging Face tokenizer (and its BERT config) is read from
``<weights_dir>/<card>/text/``, then the Hugging Face cache, then the hub unless
``HF_HUB_OFFLINE`` is set; when all fail the error lists every place looked and how to fill one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from embedcyto.backbones.cards import Card, get_card
from embedcyto.errors import BackboneError, WeightsNotFoundError

TOKENIZERS = ("open_clip", "hf", "hf-chars")


class TokenizerNotFoundError(WeightsNotFoundError):
    """A Hugging Face tokenizer (or its model config) is needed and nowhere to be found."""


@dataclass(frozen=True)
class TextSpec:
    """How one card's text tower is built and tokenized (a row of ``towers.json``)."""

    card: str
    config: dict
    tokenizer: str
    config_name: str | None = None
    tokenizer_repo: str | None = None
    hf_config: dict | None = None
    transformers: bool = False

    @property
    def context_length(self) -> int:
        return int(self.config["text_cfg"].get("context_length", 77))

    @property
    def is_hf(self) -> bool:
        return self.tokenizer in ("hf", "hf-chars")


def _table() -> dict[str, Any]:
    path = resources.files("embedcyto.backbones.text") / "towers.json"
    return {k: v for k, v in json.loads(path.read_text("utf-8")).items() if not k.startswith("_")}


def text_cards() -> tuple[str, ...]:
    """Names of the cards that have a text tower."""
    return tuple(sorted(_table()))


def has_text(card: Card | str) -> bool:
    return (card.name if isinstance(card, Card) else str(card)) in _table()


def text_spec(card: Card | str) -> TextSpec:
    """The text-tower row of ``card``.

    Raises:
        BackboneError: the card has no text tower (image-only models), naming those that do.
    """
    name = card.name if isinstance(card, Card) else str(card)
    row = _table().get(name)
    if row is None:
        raise BackboneError(
            f"model {name!r} has no text encoder, so it cannot embed class prompts; models with "
            f"one: {', '.join(text_cards())}"
        )
    if row.get("tokenizer") not in TOKENIZERS:
        raise BackboneError(f"text tower of {name!r}: tokenizer must be one of {TOKENIZERS}")
    config = dict(row.get("config") or {})
    if row.get("open_clip"):
        from embedcyto.backbones.text.build import open_clip_config

        config = open_clip_config(row["open_clip"])
    if "text_cfg" not in config or "embed_dim" not in config:
        raise BackboneError(f"text tower of {name!r}: config needs embed_dim and text_cfg")
    return TextSpec(
        card=name,
        config=config,
        tokenizer=row["tokenizer"],
        config_name=row.get("open_clip"),
        tokenizer_repo=row.get("tokenizer_repo"),
        hf_config=row.get("hf_config"),
        transformers=bool(row.get("transformers", False)),
    )


def build_text_tower(card: Card | str, **kwargs):
    """Build a card's text tower; see :func:`embedcyto.backbones.text.build.build_text_tower`."""
    from embedcyto.backbones.text.build import build_text_tower as _build

    return _build(get_card(card) if isinstance(card, str) else card, **kwargs)


def text_folder(card: Card, weights_dir: str | Path | None = None) -> Path | None:
    """``<weights_dir>/<card>/text``, where a Hugging Face tokenizer and config may be put."""
    from embedcyto.backbones.weights import default_weights_dir

    wdir = Path(weights_dir).expanduser() if weights_dir else default_weights_dir()
    return None if wdir is None else wdir / card.name / "text"


__all__ = [
    "TextSpec",
    "TokenizerNotFoundError",
    "build_text_tower",
    "has_text",
    "text_cards",
    "text_folder",
    "text_spec",
]
