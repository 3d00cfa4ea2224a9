"""The study's learning-rate schedule: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math


def learning_rate(step: int, iterations: int, lr: float, warmup: int, min_lr: float) -> float:
    """Learning rate of optimizer step ``step`` (0-based) out of ``iterations``.

    Steps ``0..warmup-1`` rise linearly to ``lr`` (the first step already moves, at
    ``lr / warmup``); the remaining steps follow half a cosine from ``lr`` down to exactly
    ``min_lr`` at the last step.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, iterations - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def lr_lambda(iterations: int, lr: float, warmup: int, min_lr: float):
    """The multiplier of the peak ``lr`` per step, for ``torch.optim.lr_scheduler.LambdaLR``."""
    return lambda step: learning_rate(step, iterations, lr, warmup, min_lr) / lr
