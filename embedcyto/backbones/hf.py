"""The transformers family: one loader for every card whose model is a transformers class.

The architecture comes from the card alone (``source`` is the model class, ``model_kwargs`` the
configuration, with ``model_type``), so nothing is fetched to build it. Weights are loaded by
transformers' own ``from_pretrained`` from a private folder holding the card's configuration and
a link to the weights file: that applies the library's own key conversions (transformers 5
renamed the attention layers of checkpoints published with earlier versions, and strips a
``vit.`` prefix of classifier checkpoints). Loading stays strict: any missing, unexpected or
mis-shaped key that the card does not declare in ``checkpoint_ignore`` is an error naming them.

transformers' ViT and DINOv2 attention already owns separate ``q_proj``, ``k_proj``,
``v_proj`` and ``o_proj`` linear layers (CLIP: ``out_proj``), so LoRA targets them directly.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from embedcyto.backbones.cards import Card, _thaw
from embedcyto.backbones.pooling import TransformersEncoder
from embedcyto.errors import BackboneError

log = logging.getLogger(__name__)

MODEL_CLASSES = ("ViTModel", "Dinov2Model", "CLIPVisionModelWithProjection")


def _transformers():
    from embedcyto._torchvision_compat import ensure_torchvision

    ensure_torchvision()
    import transformers

    return transformers


def model_config(card: Card):
    """The transformers configuration the card describes (no network, no files)."""
    transformers = _transformers()
    kwargs = _thaw(card.model_kwargs)
    model_type = kwargs.pop("model_type", None)
    if not model_type:
        raise BackboneError(f"card {card.name!r}: transformers cards need model_kwargs.model_type")
    try:
        return transformers.AutoConfig.for_model(model_type, **kwargs)
    except (ValueError, TypeError) as err:
        raise BackboneError(f"card {card.name!r}: bad transformers configuration: {err}") from err


def _model_class(card: Card):
    if card.source not in MODEL_CLASSES:
        raise BackboneError(
            f"card {card.name!r}: transformers class {card.source!r} is not one of {MODEL_CLASSES}"
        )
    return getattr(_transformers(), card.source)


def _init_kwargs(card: Card) -> dict:
    # ViTModel adds a randomly initialised pooler unless told not to; only "pooler" cards use it.
    return {"add_pooling_layer": card.pool == "pooler"} if card.source == "ViTModel" else {}


def build_transformers_encoder(card: Card) -> nn.Module:
    """The card's transformers model with random weights, wrapped to return the embedding."""
    config = model_config(card)
    model = _model_class(card)(config, **_init_kwargs(card))
    return TransformersEncoder(model, card.pool, prefix_tokens=1 + card.registers)


def _ignored(key: str, card: Card) -> bool:
    return any(key.startswith(p) or f".{p}" in f".{key}" for p in card.checkpoint_ignore)


def load_transformers_weights(encoder: TransformersEncoder, card: Card, path: Path) -> None:
    """Load a published weights file into ``encoder.model`` through ``from_pretrained``.

    Raises:
        BackboneError: keys missing, unexpected (beyond ``checkpoint_ignore``) or mis-shaped.
    """
    cls, config = _model_class(card), model_config(card)
    what = f"model {card.name!r} ({path})"
    name = "model.safetensors" if path.suffix == ".safetensors" else "pytorch_model.bin"
    with tempfile.TemporaryDirectory(prefix="embedcyto-hf-") as folder:
        config.save_pretrained(folder)
        os.symlink(Path(path).resolve(), Path(folder) / name)
        try:
            loaded, info = cls.from_pretrained(
                folder, config=config, output_loading_info=True, dtype=torch.float32,
                use_safetensors=name.endswith(".safetensors"), **_init_kwargs(card),
            )
        except (OSError, RuntimeError, ValueError) as err:
            raise BackboneError(f"weights do not fit {what}: {err}") from err
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(k for k in info.get("unexpected_keys") or [] if not _ignored(k, card))
    shapes = sorted(str(m) for m in info.get("mismatched_keys") or [])
    if missing or unexpected or shapes:
        parts = [f"weights do not fit {what}:"]
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", shapes)):
            if keys:
                shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
                parts.append(f"{len(keys)} {label} ({shown})")
        parts.append("Is this the checkpoint for this model? Check the file (`weights=PATH`) and "
                     "the card.")
        raise BackboneError(" ".join(parts))
    encoder.model.load_state_dict(loaded.state_dict(), strict=True)
