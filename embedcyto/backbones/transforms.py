"""Image preprocessing, derived from the card alone.

This is the only module that turns a card's mean, std, size and resize mode into pixels; no other
code in embedcyto writes a mean or std. Evaluation transforms are deterministic; the training
transform adds the study's LoRA augmentation (random resized crop at scale 0.7-1, horizontal flip).
"""

from __future__ import annotations

from typing import Callable

from embedcyto.backbones.cards import Card

TRAIN_CROP_SCALE = (0.7, 1.0)


def _to_rgb(image):
    """Greyscale, palette and RGBA images become 3-channel RGB, as every backbone expects."""
    return image if image.mode == "RGB" else image.convert("RGB")


def preprocess_spec(card: Card, *, train: bool = False) -> dict:
    """JSON-able description of :func:`make_transform` for provenance records."""
    spec = {
        "input_size": card.input_size,
        "resize": card.resize,
        "crop": "center" if card.resize == "shortest" else "none",
        "interpolation": card.interpolation,
        "mean": list(card.mean),
        "std": list(card.std),
        "to_rgb": True,
    }
    if resize_size(card) != card.input_size:
        spec["resize_to"] = resize_size(card)
    if train:
        spec["train_augmentation"] = {
            "random_resized_crop_scale": list(TRAIN_CROP_SCALE),
            "horizontal_flip_p": 0.5,
        }
    return spec


def resize_size(card: Card) -> int:
    """Short-side size before the centre crop: ``input_size / crop_pct`` (256 for 224 at 0.875)."""
    if card.resize != "shortest" or card.crop_pct >= 1.0:
        return card.input_size
    return int(card.input_size / card.crop_pct + 1e-6)


def make_transform(card: Card, *, train: bool = False) -> Callable:
    """PIL image -> normalised float tensor ``[3, input_size, input_size]``.

    Args:
        card: The backbone's card (size, resize mode, interpolation, mean, std).
        train: Add random resized crop (scale 0.7-1.0) and horizontal flip; randomness comes
            from torch's generator, so seed it for reproducible training.
    """
    from embedcyto._torchvision_compat import ensure_torchvision

    ensure_torchvision()
    from torchvision import transforms as T

    mode = {
        "bicubic": T.InterpolationMode.BICUBIC,
        "bilinear": T.InterpolationMode.BILINEAR,
        "nearest": T.InterpolationMode.NEAREST,
    }[card.interpolation]
    size = card.input_size
    if train:
        geometry = [
            T.RandomResizedCrop(size, scale=TRAIN_CROP_SCALE, interpolation=mode),
            T.RandomHorizontalFlip(),
        ]
    elif card.resize == "squash":
        geometry = [T.Resize((size, size), interpolation=mode)]
    else:
        geometry = [T.Resize(resize_size(card), interpolation=mode), T.CenterCrop(size)]
    return T.Compose(
        [T.Lambda(_to_rgb), *geometry, T.ToTensor(), T.Normalize(list(card.mean), list(card.std))]
    )
