"""Extraction under ``torchrun``: each rank computes its shard, rank 0 merges them.

``torchrun`` starts one process per rank and tells each its ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``. embedcyto then:

1. opens the dataset on rank 0 first (it may write ``splits.json`` and ``image_check.json``),
   waits, and lets the other ranks open it, reusing both files;
2. runs shard ``RANK/WORLD_SIZE`` of the rows on every rank (``cuda:LOCAL_RANK`` on GPUs), each
   writing its own part with its own lock and resume folder; a store that is already current is
   a cache hit on every rank, with no model built;
3. waits for every rank, and rank 0 merges the parts into the one store.

Coordination is ``torch.distributed`` (gloo on the CPU; NCCL for CUDA tensors, with gloo for the
small status messages). A rank that fails with an embedcyto error tells the others, so every
rank stops with a message naming it instead of waiting for a barrier that never comes. The store
folder must be on a file system every rank sees.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from embedcyto.errors import EmbedcytoError

log = logging.getLogger(__name__)

T = TypeVar("T")
# Ranks may finish their shards far apart (uneven images, a slower GPU); waiting is normal.
DEFAULT_TIMEOUT_S = 24 * 3600


@dataclass(frozen=True)
class RankEnv:
    """Where this process stands in a ``torchrun`` job."""

    rank: int
    world_size: int
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RankEnv | None:
        """The job described by torchrun's variables; None when not started by it (or alone).

        Raises:
            EmbedcytoError: the variables are set but not integers in range.
        """
        environ = os.environ if environ is None else environ
        if "RANK" not in environ or "WORLD_SIZE" not in environ:
            return None
        try:
            env = cls(int(environ["RANK"]), int(environ["WORLD_SIZE"]),
                      int(environ.get("LOCAL_RANK", "0")))
        except ValueError as err:
            raise EmbedcytoError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({err}); "
                                 "start embedcyto with torchrun, which sets them") from None
        if env.world_size < 1 or not 0 <= env.rank < env.world_size or env.local_rank < 0:
            raise EmbedcytoError(f"RANK={env.rank} WORLD_SIZE={env.world_size} LOCAL_RANK="
                                 f"{env.local_rank} are inconsistent; start with torchrun")
        return env if env.world_size > 1 else None

    def device(self, requested: str) -> str:
        """The device of this rank: "auto"/"cuda" become ``cuda:LOCAL_RANK`` when CUDA exists."""
        import torch

        if requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        if requested == "cuda":
            raise EmbedcytoError("device 'cuda' was asked for but CUDA is not available; use "
                                 "`device='cpu'` (gloo) or run on GPU nodes")
        return "cpu" if requested == "auto" else requested


class Ranks:
    """Collective helpers over an initialised process group; see :func:`process_group`."""

    def __init__(self, env: RankEnv):
        self.env = env

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    def _gather(self, item: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, item)
        return out

    def _broadcast(self, item: Any) -> Any:
        import torch.distributed as dist

        box = [item]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_ok(self, fn: Callable[[], T], summary: Callable[[T], Any] = lambda v: None,
               ) -> tuple[T, list[Any]]:
        """Run ``fn`` on every rank; return its value and every rank's ``summary`` of it.

        Raises:
            EmbedcytoError: on every rank when any rank's ``fn`` raised one (naming it).
        """
        value, error = _attempt(fn)
        status = (None, str(error)) if error else (summary(value), None)
        statuses = self._gather(status)
        _raise_first(statuses, error)
        return value, [s[0] for s in statuses]

    def rank0_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0, then (if it worked) on the others; every rank gets its value.

        For steps that may create shared files: rank 0 creates them, the others reuse them.
        """
        value, error = _attempt(fn) if self.rank == 0 else (None, None)
        first = self._broadcast(str(error) if error else None)
        if first is not None:
            if error is not None:
                raise error
            raise EmbedcytoError(f"rank 0 stopped: {first}")
        if self.rank != 0:
            value, error = _attempt(fn)
        statuses = self._gather((None, str(error) if error else None))
        _raise_first(statuses, error)
        return value

    def from_rank0(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only while the others wait; every rank gets its (picklable) value.

        For decisions and results that rank 0 alone may compute (reading a shared folder,
        evaluating a model it alone holds), so that every rank then acts alike.
        """
        value, error = _attempt(fn) if self.rank == 0 else (None, None)
        value, message = self._broadcast((value, str(error) if error else None))
        if message is not None:
            if error is not None:
                raise error
            raise EmbedcytoError(f"rank 0 stopped: {message}")
        return value

    def on_rank0(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 only while the others wait; its failure stops every rank."""
        value, error = _attempt(fn) if self.rank == 0 else (None, None)
        message = self._broadcast(str(error) if error else None)
        if message is not None:
            if error is not None:
                raise error
            raise EmbedcytoError(f"rank 0 stopped: {message}")
        return value


def _attempt(fn: Callable[[], T]) -> tuple[T | None, EmbedcytoError | None]:
    try:
        return fn(), None
    except EmbedcytoError as err:
        return None, err


def _raise_first(statuses: list[tuple[Any, str | None]], own: EmbedcytoError | None) -> None:
    if own is not None:
        raise own
    failed = [(r, msg) for r, (_, msg) in enumerate(statuses) if msg is not None]
    if failed:
        r, msg = failed[0]
        raise EmbedcytoError(f"rank {r} stopped: {msg}")


@contextmanager
def process_group(env: RankEnv, device: str, *,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Ranks]:
    """Join the torchrun job for the duration of the block (gloo on CPU; NCCL + gloo on CUDA).

    An already initialised default group (a caller's own) is used as it is and left open.
    """
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        yield Ranks(env)
        return
    backend = "gloo"
    if str(device).startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                            timeout=_dt.timedelta(seconds=timeout_s))
    try:
        yield Ranks(env)
        # Leave together: a rank tearing gloo down while another still uses it (rank 0 still
        # writing the run) can abort at exit. After an error no barrier: that rank just goes.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def extract_sharded(dataset, card, *, ranks: Ranks, store_dir, split_dir=None, weights=None,
                    weights_dir=None, random_init: bool = False, config=None):
    """:func:`embedcyto.extract.extract_features` with every rank computing its shard.

    Every rank returns the same :class:`embedcyto.extract.ExtractResult`, describing the merged
    store: ``computed``/``resumed`` are summed over ranks.
    """
    from embedcyto.extract import ExtractConfig, ExtractResult, extract_features
    from embedcyto.store import store_path
    from embedcyto.store.merge import merge_shards
    from embedcyto.store.shards import Shard

    config = config or ExtractConfig()
    start = time.perf_counter()
    shard = Shard(ranks.rank, ranks.world_size)
    _, done = ranks.all_ok(
        lambda: extract_features(dataset, card, store_dir=store_dir, split_dir=split_dir,
                                 weights=weights, weights_dir=weights_dir,
                                 random_init=random_init, config=config, shard=shard),
        summary=lambda r: (r.computed, r.resumed, r.cache_hit, r.build_seconds, r.loop_seconds),
    )
    name = card if isinstance(card, str) else card.name
    path = store_path(store_dir, dataset.name, name)
    if not all(d[2] for d in done):
        ranks.on_rank0(lambda: merge_shards(path, count=ranks.world_size, force=config.force))
    return ExtractResult(
        path=path, rows=len(dataset.records), computed=sum(d[0] for d in done),
        resumed=sum(d[1] for d in done), cache_hit=all(d[2] for d in done),
        seconds=time.perf_counter() - start, build_seconds=max(d[3] for d in done),
        loop_seconds=max(d[4] for d in done), skipped=list(dataset.skipped),
    )
