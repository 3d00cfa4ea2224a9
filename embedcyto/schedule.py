"""The study's learning-rate schedule: linear warm-up, then half a cosine down to a floor.

Both of embedcyto's trained heads use it: the study's linear head on cached features
(:mod:`embedcyto.probes.torch_head`) and LoRA fine-tuning (:mod:`embedcyto.lora.train`).
Pure functions of the step, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

#: The study's warm-up length, in optimizer steps.
STUDY_WARMUP = 50


def warmup_cosine(step: int, total: int, lr: float, warmup: int, min_lr: float) -> float:
    """Learning rate of optimizer step ``step`` (0-based) out of ``total``.

    Steps ``0..warmup-1`` rise linearly to ``lr`` (the first step already moves, at
    ``lr / warmup``); the remaining steps follow half a cosine from ``lr`` down to exactly
    ``min_lr`` at the last step. A warm-up as long as the run is cut to ``total - 1`` steps so
    that the last step still reaches ``min_lr``.
    """
    warmup = min(warmup, max(total - 1, 0))
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(total - 1 - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def scaled_warmup(total: int, warmup: int = STUDY_WARMUP) -> int:
    """The default warm-up of a ``total``-step run: ``warmup`` steps, at most half the run.

    The study's runs are all at least 100 steps long, so they keep its 50 steps; a shorter run
    (a quick trial, a smoke test) warms up over its first half instead of being refused.
    """
    return min(int(warmup), max(int(total), 0) // 2)


def lr_multiplier(total: int, lr: float, warmup: int, min_lr: float) -> Callable[[int], float]:
    """Step -> multiple of the peak ``lr``, for ``torch.optim.lr_scheduler.LambdaLR``."""
    return lambda step: warmup_cosine(step, total, lr, warmup, min_lr) / lr
