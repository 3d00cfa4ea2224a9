"""Estimated cost of a forward pass, from the card alone (nothing is built or run).

A ViT's work is dominated by its matrix products: about 2 FLOP per parameter per token, plus
attention's two ``T x T x D`` products in every block. From the card's parameter count, width,
depth, input size, patch size and register tokens:

    FLOP/image ~= 2 * params * T + 4 * depth * T^2 * width,    T = (input / patch)^2 + 1 + registers

The milliseconds shown by ``embedcyto models list`` divide that by an *effective* throughput per
hardware class. They are estimates, not measurements:

- ``cpu``: 2 CPU cores with bf16 matrix units (AMX), bf16 weights. Calibrated on ViT-B/16 there:
  about 35 GFLOP per image at about 40 images a second, i.e. 1.4 TFLOP/s effective.
- ``gpu``: one data-centre GPU of the A100 class in bf16, taken at 40 % of its 312 TFLOP/s peak
  (125 TFLOP/s effective) at a batch large enough to fill it.
"""

from __future__ import annotations

from embedcyto.backbones.cards import Card

# Effective FLOP/s per hardware class (see the module docstring for where they come from).
THROUGHPUT = {"cpu": 1.4e12, "gpu": 125e12}


def tokens(card: Card) -> int:
    """Tokens per image at the card's input size: patches, class token and registers."""
    side = card.input_size // card.patch_size
    return side * side + 1 + card.registers


def flops_per_image(card: Card) -> float | None:
    """Estimated FLOP for one image, or None when the card has no parameter count."""
    if not card.params:
        return None
    t = tokens(card)
    return 2.0 * card.params * t + 4.0 * card.depth * t * t * card.width


def estimated_ms(card: Card, hardware: str) -> float | None:
    """Estimated milliseconds per image on ``hardware`` (a key of ``THROUGHPUT``)."""
    flops = flops_per_image(card)
    return None if flops is None else 1e3 * flops / THROUGHPUT[hardware]
