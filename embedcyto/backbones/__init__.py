"""Backbones: model cards (data), one loader per library family, weights, preprocessing.

``get_card`` and ``list_cards`` import nothing heavy; the rest imports torch when first used.
"""

from __future__ import annotations

import importlib

from embedcyto.backbones.cards import Card, get_card, list_cards

__all__ = [
    "Backbone",
    "Card",
    "build_backbone",
    "get_card",
    "list_cards",
    "make_transform",
    "preprocess_spec",
    "resolve_device",
    "resolve_precision",
    "resolve_weights",
]

_LAZY = {
    "Backbone": "embedcyto.backbones.loaders",
    "build_backbone": "embedcyto.backbones.loaders",
    "make_transform": "embedcyto.backbones.transforms",
    "preprocess_spec": "embedcyto.backbones.transforms",
    "resolve_device": "embedcyto.backbones.runtime",
    "resolve_precision": "embedcyto.backbones.runtime",
    "resolve_weights": "embedcyto.backbones.weights",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'embedcyto.backbones' has no attribute {name!r}")
