"""Build a card's image encoder: one loader per library family, never a class per model.

Every backbone is wrapped in :class:`Backbone`, whose ``forward(images)`` returns the card's
embedding ``[B, embed_dim]`` exactly as the study pooled it, and which records the weights file
and its SHA-256 for provenance. Only the image tower is built: CLIP text towers (and BiomedCLIP's
PubMedBERT, whose config would otherwise be needed offline) are never instantiated.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from embedcyto.backbones.cards import Card, _thaw, get_card
from embedcyto.backbones.pooling import TokenPooled
from embedcyto.backbones.weights import (
    file_sha256,
    load_strict,
    prepare_state_dict,
    read_state_dict,
    resolve_weights,
)
from embedcyto.errors import BackboneError

log = logging.getLogger(__name__)

# JSON cards name timm MLP classes by string; only these are accepted.
_TIMM_MLP_LAYERS = ("Mlp", "SwiGLU", "SwiGLUPacked", "GluMlp")


class Backbone(nn.Module):
    """A card's image encoder: images ``[B, 3, H, W]`` in, embeddings ``[B, embed_dim]`` out.

    Attributes:
        card: The card it was built from.
        encoder: The library module doing the work (open_clip ``VisionTransformer``, a timm
            model, or :class:`ProjectedTrunk`).
        weights_path: The weights file loaded, or None for random weights.
        weights_sha256: SHA-256 of that file, or None for random weights.
    """

    def __init__(self, card: Card, encoder: nn.Module, weights_path=None, weights_sha256=None):
        super().__init__()
        self.card = card
        self.encoder = encoder
        self.weights_path = Path(weights_path) if weights_path else None
        self.weights_sha256 = weights_sha256

    @property
    def dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise BackboneError(
                f"{self.card.name} expects images [B, 3, H, W], got {tuple(images.shape)}; "
                "prepare them with embedcyto.backbones.make_transform(card)"
            )
        return self.encoder(images.to(self.dtype))

    def extra_repr(self) -> str:
        return f"card={self.card.name!r}, weights={self.weights_path}"


class ProjectedTrunk(nn.Module):
    """A timm trunk followed by a bias-free linear projection (BiomedCLIP's image tower).

    Sub-module names (``trunk``, ``head.proj``) match open_clip's ``TimmModel``, so the ``visual.``
    keys of a BiomedCLIP checkpoint load directly.
    """

    def __init__(self, trunk: nn.Module, proj_dim: int):
        super().__init__()
        self.trunk = trunk
        layers = OrderedDict(drop=nn.Dropout(0.0))
        layers["proj"] = nn.Linear(trunk.num_features, proj_dim, bias=False)
        self.head = nn.Sequential(layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _open_clip_encoder(card: Card) -> nn.Module:
    from embedcyto._torchvision_compat import ensure_torchvision

    ensure_torchvision()
    import open_clip
    from open_clip.model import _build_vision_tower

    config = {}
    if card.source:
        config = open_clip.get_model_config(card.source)
        if config is None:
            raise BackboneError(
                f"card {card.name!r}: open_clip has no model config {card.source!r}; "
                "see open_clip.list_models() for valid names"
            )
    config = _merge(config, _thaw(card.model_kwargs))
    if "vision_cfg" not in config or "embed_dim" not in config:
        raise BackboneError(f"card {card.name!r}: open_clip config needs embed_dim and vision_cfg")
    return _build_vision_tower(
        config["embed_dim"], config["vision_cfg"], quick_gelu=bool(config.get("quick_gelu", False))
    )


def _timm_kwargs(card: Card) -> dict:
    import timm.layers

    kwargs = _thaw(card.model_kwargs)
    mlp = kwargs.get("mlp_layer")
    if isinstance(mlp, str):
        if mlp not in _TIMM_MLP_LAYERS:
            raise BackboneError(
                f"card {card.name!r}: mlp_layer {mlp!r} is not one of {_TIMM_MLP_LAYERS}"
            )
        kwargs["mlp_layer"] = getattr(timm.layers, mlp)
    return kwargs


def _timm_encoder(card: Card) -> nn.Module:
    from embedcyto._torchvision_compat import ensure_torchvision

    ensure_torchvision()
    import timm

    try:
        model = timm.create_model(card.source, pretrained=False, **_timm_kwargs(card))
    except (RuntimeError, TypeError, ValueError) as err:
        message = f"card {card.name!r}: timm cannot build {card.source!r}: {err}"
        raise BackboneError(message) from err
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    if prefix != 1 + card.registers:
        raise BackboneError(
            f"card {card.name!r}: the model has {prefix - 1} register token(s), the card says "
            f"{card.registers}; fix the card's registers or model_kwargs"
        )
    if card.proj_dim is not None:
        return ProjectedTrunk(model, card.proj_dim)
    if card.pool != "cls":
        return TokenPooled(model, card.pool)
    return model


def _transformers_encoder(card: Card) -> nn.Module:
    from embedcyto.backbones.hf import build_transformers_encoder

    return build_transformers_encoder(card)


_BUILDERS = {
    "open_clip": _open_clip_encoder,
    "timm": _timm_encoder,
    "transformers": _transformers_encoder,
}


def build_encoder(card: Card, *, seed: int = 0) -> nn.Module:
    """The card's architecture with random weights drawn from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = _BUILDERS[card.family](card)
    return encoder.eval()


def _drop_unused_head(encoder: nn.Module, state: dict) -> dict:
    """Drop a classifier head a timm checkpoint carries when the card pools features instead."""
    head = getattr(encoder, "head", None)
    if isinstance(head, nn.Identity) and any(k in state for k in ("head.weight", "head.bias")):
        log.info("ignoring the checkpoint's classifier head (the card returns pooled features)")
        state = {k: v for k, v in state.items() if k not in ("head.weight", "head.bias")}
    return state


def _drop_ignored(state: dict, card: Card) -> dict:
    """Drop the keys the card declares unused (text towers, self-distillation heads)."""
    if not card.checkpoint_ignore:
        return state
    return {k: v for k, v in state.items() if not k.startswith(card.checkpoint_ignore)}


def load_weights(encoder: nn.Module, card: Card, path: Path) -> None:
    """Load a checkpoint file into an encoder built from ``card`` (strict, with clear errors).

    The file's keys are taken as the model's library publishes them: a ``checkpoint_prefix`` is
    stripped, ``checkpoint_ignore`` keys dropped, DINOv2-layout files converted by timm's own
    filter; transformers files go through transformers' own loading.
    """
    if card.family == "transformers":
        from embedcyto.backbones.hf import load_transformers_weights

        load_transformers_weights(encoder, card, Path(path))
        return
    root = getattr(encoder, "weights_root", encoder)
    state = prepare_state_dict(read_state_dict(path), card.checkpoint_prefix)
    state = _drop_ignored(state, card)
    if card.checkpoint_format == "dinov2":
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = checkpoint_filter_fn(state, root)
    state = _drop_unused_head(root, state)
    load_strict(root, state, what=f"model {card.name!r} ({path})")


def build_backbone(
    card: Card | str,
    *,
    weights: str | Path | None = None,
    random_init: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    weights_dir: str | Path | None = None,
    seed: int = 0,
) -> Backbone:
    """Build the card's image encoder, with its weights unless random weights are asked for.

    Args:
        card: A card or a card name.
        weights: Explicit weights file or folder (see :func:`resolve_weights`).
        random_init: Build the real architecture with random weights; nothing is read or
            downloaded. Implied for demonstration cards (``card.random``) without ``weights``.
        device: Where the model goes.
        dtype: Parameter dtype (None keeps float32); inputs are cast to it in ``forward``.
        weights_dir: Local weights directory (default: ``EMBEDCYTO_WEIGHTS``).
        seed: Seed of the random initialisation, so random-weight models are reproducible.

    Returns:
        A :class:`Backbone` in eval mode.

    Raises:
        WeightsNotFoundError: weights needed but not found (the message says how to get them).
        BackboneError: the weights do not fit the architecture, or the card is invalid.
    """
    card = get_card(card) if isinstance(card, str) else card
    if random_init and weights is not None:
        raise BackboneError("pass either weights or random_init=True, not both")
    path = sha = None
    if not random_init and not (card.random and weights is None):
        path = resolve_weights(card, weights, weights_dir=weights_dir)  # fail before building
    encoder = build_encoder(card, seed=seed)
    if path is not None:
        load_weights(encoder, card, path)
        sha = file_sha256(path)
        log.info("loaded %s weights from %s (sha256 %s)", card.name, path, sha[:12])
    backbone = Backbone(card, encoder, weights_path=path, weights_sha256=sha)
    backbone.requires_grad_(False)
    return backbone.to(device=device, dtype=dtype).eval()
