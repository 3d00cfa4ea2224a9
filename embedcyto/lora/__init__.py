"""LoRA: unfusing attention projections, peft adapters, and (elsewhere in the package) training.

Names are imported lazily so that importing ``embedcyto.lora`` does not pull in torch or peft.
"""

from __future__ import annotations

import importlib

__all__ = [
    "LoraSettings",
    "apply_lora",
    "expected_lora_parameters",
    "load_adapter",
    "merge_adapter",
    "save_adapter",
    "trainable_parameters",
    "unfuse_attention",
]

_LAZY = {
    "unfuse_attention": "embedcyto.lora.unfuse",
    "LoraSettings": "embedcyto.lora.adapters",
    "apply_lora": "embedcyto.lora.adapters",
    "expected_lora_parameters": "embedcyto.lora.adapters",
    "load_adapter": "embedcyto.lora.adapters",
    "merge_adapter": "embedcyto.lora.adapters",
    "save_adapter": "embedcyto.lora.adapters",
    "trainable_parameters": "embedcyto.lora.adapters",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'embedcyto.lora' has no attribute {name!r}")
