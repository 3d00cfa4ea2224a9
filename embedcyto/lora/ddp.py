"""LoRA training under ``torchrun``: data parallel steps equal to a single-process run.

Every rank builds the same model (same seed, same weights) and wraps it in
``DistributedDataParallel``. Each step's global batch (``min(batch_size, n_train)`` images of
:func:`embedcyto.lora.data.batch_plan`) is cut into contiguous slices, one per rank
(:func:`embedcyto.lora.data.rank_plan`); every image keeps its augmentation seed. So that the
update is the single-process update on the whole global batch:

- the loss a rank back-propagates is its slice's *sum* of cross-entropies times
  ``world_size / global_batch``; DDP averages gradients over ranks, which gives the gradient of
  the mean over the global batch even when slices differ by one image;
- LoRA dropout draws its mask for the whole global batch on every rank (the same generator
  state everywhere, the same kernel a single process uses) and keeps this rank's rows
  (:class:`GlobalBatchDropout`), so each image gets the mask it gets in a single process;
- validation runs on rank 0 alone (the others wait); afterwards every rank continues from rank
  0's generator state, because building a data loader draws from torch's global generator.

Each step the ranks exchange their loss sums (the logged loss is the global mean) and any image
read error, so one rank's unreadable image stops every rank with a message naming it. What
remains different from a single process is the order of floating-point reductions (and kernels
that give a row other values in a batch of another size).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from embedcyto.errors import LoraError
from embedcyto.lora.data import rank_bounds

T = TypeVar("T")


class GlobalBatchDropout(nn.Module):
    """Dropout whose mask is drawn for the global batch, of which this rank keeps its rows.

    The mask comes from ``F.dropout`` on a tensor of ones of the global batch's shape: the same
    kernel and the same draws from the generator as a single process's ``nn.Dropout`` on the
    whole batch, so ``x * mask[start:stop]`` equals that process's output for these rows. Every
    rank draws the whole mask (a little extra work for dropout only) and the generators of all
    ranks stay in step.
    """

    def __init__(self, p: float, start: int, stop: int, size: int):
        super().__init__()
        self.p, self.start, self.stop, self.size = float(p), start, stop, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.shape[0] != self.stop - self.start:
            raise LoraError(f"LoRA dropout expected this rank's {self.stop - self.start} images "
                            f"but got a batch of {x.shape[0]}")
        ones = torch.ones((self.size, *x.shape[1:]), dtype=x.dtype, device=x.device)
        mask = F.dropout(ones, self.p, training=True)[self.start:self.stop].clone()
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, rows={self.start}:{self.stop} of {self.size}"


class DataParallel:
    """This rank's part in a distributed LoRA run over ``ranks`` (see the module docstring).

    Args:
        ranks: the job's :class:`embedcyto.distributed.Ranks`.
        size: images in each global batch.

    Raises:
        LoraError: fewer images per step than ranks.
    """

    def __init__(self, ranks, size: int):
        self.ranks = ranks
        self.size = int(size)
        self.start, self.stop = rank_bounds(self.size, ranks.world_size)[ranks.rank]

    @property
    def rank(self) -> int:
        return self.ranks.rank

    @property
    def world_size(self) -> int:
        return self.ranks.world_size

    @property
    def is_main(self) -> bool:
        return self.ranks.rank == 0

    def together(self, fn: Callable[[], T]) -> T:
        """``fn`` on every rank; an embedcyto error on any rank stops them all."""
        return self.ranks.all_ok(fn)[0]

    def from_rank0(self, fn: Callable[[], T]) -> T:
        """``fn`` on rank 0 while the others wait; every rank gets its value."""
        return self.ranks.from_rank0(fn)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` (rank 0's parameters broadcast to all)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else None
        # Buffers are equal on every rank and never change: no sync before each forward pass
        # (the option was renamed in recent torch releases).
        names = inspect.signature(DistributedDataParallel.__init__).parameters
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in names
                   else {"broadcast_buffers": False})
        return DistributedDataParallel(model, device_ids=ids, **no_sync)

    def step_loss(self, logits: torch.Tensor, labels: torch.Tensor,
                  check: Callable[[], None]) -> tuple[torch.Tensor, float]:
        """The loss to back-propagate on this rank, and the global batch's mean loss.

        ``check`` raises this rank's read errors; it runs on every rank before any rank goes
        on to the backward pass, so that a failure stops every rank cleanly.
        """
        total = F.cross_entropy(logits.float(), labels, reduction="sum")
        local = float(total.detach())
        _, sums = self.ranks.all_ok(check, summary=lambda _: local)
        return total * (self.world_size / self.size), math.fsum(sums) / self.size

    def validate(self, fn: Callable[[], T]) -> T:
        """``fn`` on rank 0 alone; every rank then continues from rank 0's generator state."""

        def run():
            return fn(), torch.get_rng_state()

        value, state = self.ranks.from_rank0(run)
        if not self.is_main:
            torch.set_rng_state(state)
        return value

    @contextmanager
    def global_dropout(self, model: nn.Module) -> Iterator[int]:
        """Swap every LoRA dropout of ``model`` for a :class:`GlobalBatchDropout`; yields how
        many were swapped, and puts the originals back on leaving."""
        swapped = []
        for module in model.modules():
            table = getattr(module, "lora_dropout", None)
            if not isinstance(table, nn.ModuleDict):
                continue
            for name, layer in list(table.items()):
                if isinstance(layer, nn.Dropout) and layer.p > 0:
                    table[name] = GlobalBatchDropout(layer.p, self.start, self.stop,
                                                     self.size).train(layer.training)
                    swapped.append((table, name, layer))
        try:
            yield len(swapped)
        finally:
            for table, name, layer in swapped:
                table[name] = layer


class SingleProcess:
    """The one-process stand-in for :class:`DataParallel`, with the same interface.

    The training loop is written once, against this interface: here every collective is a
    plain call, the model is not wrapped, and the loss is the batch's mean cross-entropy (what
    :meth:`DataParallel.step_loss` gives for one rank).
    """

    rank = 0
    world_size = 1
    is_main = True

    def together(self, fn: Callable[[], T]) -> T:
        return fn()

    def from_rank0(self, fn: Callable[[], T]) -> T:
        return fn()

    def validate(self, fn: Callable[[], T]) -> T:
        return fn()

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        return model

    def step_loss(self, logits: torch.Tensor, labels: torch.Tensor,
                  check: Callable[[], None]) -> tuple[torch.Tensor, float]:
        """Mean cross-entropy of the batch, after ``check`` (read errors) has passed."""
        check()
        loss = F.cross_entropy(logits.float(), labels)
        return loss, float(loss.detach())

    @contextmanager
    def global_dropout(self, model: nn.Module) -> Iterator[int]:
        """Nothing to swap: one process already draws the whole batch's dropout mask."""
        yield 0


def make_team(ranks, size: int) -> DataParallel | SingleProcess:
    """This process's part in a run: :class:`DataParallel` under torchrun with two or more
    ranks, else :class:`SingleProcess`.

    Args:
        ranks: the job's :class:`embedcyto.distributed.Ranks`, or None outside torchrun.
        size: images in each global batch.
    """
    if ranks is None or ranks.world_size < 2:
        return SingleProcess()
    return DataParallel(ranks, size)
