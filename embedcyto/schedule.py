"""The learning-rate schedule of the study: linear warm-up, then half a cosine to a floor.

Both trained heads of embedcyto follow it — the study's linear head on cached features
(:mod:`embedcyto.probes.torch_head`) and the LoRA runs — so it is written once, as a pure
function of the step, with no torch import.
"""

from __future__ import annotations

import math


def learning_rate(step: int, iterations: int, lr: float, warmup: int, min_lr: float) -> float:
    """Learning rate of optimiser step ``step`` (0-based) out of ``iterations``.

    Steps ``0..warmup-1`` rise linearly to ``lr`` (the first step already moves, at
    ``lr / warmup``); the remaining steps follow half a cosine from ``lr`` down to exactly
    ``min_lr`` at the last step. A warm-up as long as the run or longer (the study head's
    fixed 50 steps on a small training set) is cut to ``iterations - 1`` steps, so the rate
    still reaches ``lr`` instead of stopping part-way up.
    """
    warmup = min(warmup, max(iterations - 1, 0))
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, iterations - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def lr_lambda(iterations: int, lr: float, warmup: int, min_lr: float):
    """The multiplier of the peak ``lr`` per step, for ``torch.optim.lr_scheduler.LambdaLR``."""
    return lambda step: learning_rate(step, iterations, lr, warmup, min_lr) / lr
