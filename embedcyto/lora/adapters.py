"""LoRA adapters on a backbone's attention projections, through peft.

LoRA wraps, never edits in place: :func:`apply_lora` unfuses the attention of a deep copy of the
backbone (see :mod:`embedcyto.lora.unfuse`), then lets peft add the low-rank adapters, freeze the
base weights and handle saving, loading and merging. B starts at zero, so the adapted model's
output at initialisation equals the frozen backbone's.

The study's setting (after CLIP-LoRA; :class:`embedcyto.lora.config.LoraSettings`) is the
default: rank 2, alpha 1, dropout 0.25 on the LoRA input, on q and v, scaled by
alpha / sqrt(rank) (peft's ``use_rslora``). With rank r on
``n_targets`` square D x D projections in each of L blocks, LoRA trains L * r * 2D * n_targets
parameters (:func:`expected_lora_parameters`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from torch import nn

from embedcyto.backbones.cards import Card
from embedcyto.errors import LoraError
from embedcyto.lora.config import TARGETS, LoraSettings
from embedcyto.lora.unfuse import target_module_names, unfuse_attention

SETTINGS_FILE = "embedcyto_lora.json"
_PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _peft():
    from embedcyto._torchvision_compat import ensure_torchvision

    ensure_torchvision()
    import peft

    return peft


def _unfused_copy(backbone: nn.Module) -> nn.Module:
    model = copy.deepcopy(backbone)
    unfuse_attention(model)
    return model


def apply_lora(backbone: nn.Module, settings: LoraSettings = LoraSettings()):
    """A peft model wrapping an unfused copy of ``backbone``; ``backbone`` itself is not changed.

    Returns:
        A ``peft.PeftModel``: call it like the backbone; only LoRA parameters are trainable.

    Raises:
        LoraError: the backbone has no attention that can carry LoRA.
    """
    peft = _peft()
    model = _unfused_copy(backbone)
    names = target_module_names(model, settings.targets)
    config = peft.LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=names,
        use_rslora=settings.rslora,
        init_lora_weights=True,
        bias="none",
    )
    wrapped = peft.get_peft_model(model, config)
    _check_wrapped(wrapped, len(names))
    return wrapped


def _check_wrapped(model: nn.Module, expected: int) -> None:
    from peft.tuners.lora import LoraLayer

    found = sum(isinstance(m, LoraLayer) for m in model.modules())
    if found != expected:
        raise LoraError(f"LoRA was placed on {found} layers, expected {expected}")


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters that receive gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def expected_lora_parameters(
    width: int | Card, depth: int | None = None, rank: int = 2, n_targets: int = 2
) -> int:
    """L * r * (D + D) * n_targets: the LoRA parameter count for square D x D projections.

    Args:
        width: Transformer width D, or a card (its ``width`` and ``depth`` are used).
        depth: Number of blocks L (taken from the card when ``width`` is a card).
        rank: LoRA rank r.
        n_targets: Projections adapted per block (2 for q and v).
    """
    if isinstance(width, Card):
        width, depth = width.width, width.depth if depth is None else depth
    if depth is None:
        raise LoraError("expected_lora_parameters needs depth when given a width")
    return depth * rank * (width + width) * n_targets


def save_adapter(model, directory: str | Path) -> Path:
    """Write the adapter (peft safetensors format) plus embedcyto's settings and card name."""
    directory = Path(directory)
    model.save_pretrained(str(directory))
    config = model.peft_config["default"]
    settings = LoraSettings(
        rank=config.r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        targets=_targets_of(config.target_modules),
        rslora=config.use_rslora,
    )
    card = getattr(model, "card", None)
    meta = {
        "card": card.name if card is not None else None,
        "backbone_weights_sha256": getattr(model, "weights_sha256", None),
        "settings": settings.to_dict(),
    }
    (directory / SETTINGS_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return directory


def _targets_of(names) -> tuple[str, ...]:
    """Recover the q/k/v/o targets from peft's list of layer names."""
    suffix = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "o", "proj": "o",
              "o_proj": "o", "query": "q", "key": "k", "value": "v", "dense": "o"}
    found = {suffix[n.rsplit(".", 1)[-1]] for n in names if n.rsplit(".", 1)[-1] in suffix}
    return tuple(t for t in TARGETS if t in found)


def read_adapter_info(directory: str | Path) -> dict:
    """The card name, backbone hash and :class:`LoraSettings` saved with an adapter."""
    directory = Path(directory)
    missing = [n for n in (*_PEFT_FILES, SETTINGS_FILE) if not (directory / n).is_file()]
    if missing:
        raise LoraError(
            f"{directory} is not a saved embedcyto adapter (missing {', '.join(missing)}); "
            "save one with save_adapter or `embedcyto lora`"
        )
    meta = json.loads((directory / SETTINGS_FILE).read_text(encoding="utf-8"))
    meta["settings"] = LoraSettings.from_dict(meta["settings"])
    return meta


def load_adapter(backbone: nn.Module, directory: str | Path, *, trainable: bool = False):
    """Put a saved adapter on an unfused copy of ``backbone`` (which is not changed).

    Raises:
        LoraError: the folder is not an adapter, or it was trained on another model.
    """
    meta = read_adapter_info(directory)
    card = getattr(backbone, "card", None)
    if card is not None and meta.get("card") not in (None, card.name):
        raise LoraError(
            f"adapter in {directory} was trained on model {meta['card']!r}, "
            f"not {card.name!r}; load it on {meta['card']!r}"
        )
    peft = _peft()
    model = _unfused_copy(backbone)
    return peft.PeftModel.from_pretrained(model, str(directory), is_trainable=trainable)


def merge_adapter(model) -> nn.Module:
    """A plain module with the LoRA update folded into the weights (``model`` is not changed)."""
    return copy.deepcopy(model).merge_and_unload()
