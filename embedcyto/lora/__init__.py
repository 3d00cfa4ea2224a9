"""LoRA: unfusing attention projections, peft adapters, training runs and adapted features.

Names are imported lazily so that importing ``embedcyto.lora`` does not pull in torch or peft.
"""

from __future__ import annotations

import importlib

__all__ = [
    "LoraResult",
    "LoraRunConfig",
    "LoraSettings",
    "apply_lora",
    "expected_lora_parameters",
    "export_features",
    "load_adapter",
    "load_classifier",
    "merge_adapter",
    "save_adapter",
    "train_lora",
    "trainable_parameters",
    "unfuse_attention",
]

_LAZY = {
    "unfuse_attention": "embedcyto.lora.unfuse",
    "LoraSettings": "embedcyto.lora.config",
    "apply_lora": "embedcyto.lora.adapters",
    "expected_lora_parameters": "embedcyto.lora.adapters",
    "load_adapter": "embedcyto.lora.adapters",
    "merge_adapter": "embedcyto.lora.adapters",
    "save_adapter": "embedcyto.lora.adapters",
    "trainable_parameters": "embedcyto.lora.adapters",
    "LoraRunConfig": "embedcyto.lora.config",
    "LoraResult": "embedcyto.lora.train",
    "train_lora": "embedcyto.lora.train",
    "export_features": "embedcyto.lora.export",
    "load_classifier": "embedcyto.lora.model",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'embedcyto.lora' has no attribute {name!r}")
