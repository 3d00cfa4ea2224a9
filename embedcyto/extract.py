"""Images → frozen backbone → feature store: the only stage that runs a backbone without gradients.

One call extracts one (dataset, model) pair. It is built around the store's writer, so that:

- a finished store with the same inputs is a cache hit: the model is not even built;
- an interrupted run resumes with only the rows that were not written yet;
- a store made from other inputs (weights, preprocessing, split, images) is refused, or rebuilt
  with ``force=True``.

Images are decoded in DataLoader workers (PIL, with reduced-size JPEG decoding), the model runs
under ``torch.no_grad()`` in the requested precision. ``no_grad`` rather than
``inference_mode`` on purpose: with bf16 on the CPU, open_clip ran several times slower under
``inference_mode`` (see docs/models.md).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from embedcyto.datasets.records import Dataset
from embedcyto.errors import EmbedcytoError, ImageReadError

if TYPE_CHECKING:  # heavy imports only for type checkers
    import torch

    from embedcyto.backbones import Backbone, Card
    from embedcyto.store import FeatureWriter
    from embedcyto.store.shards import Shard

log = logging.getLogger(__name__)

STORE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class ExtractConfig:
    """How to run an extraction (what does not change the features, apart from precision).

    Attributes:
        batch_size: images per forward pass.
        num_workers: DataLoader decoding processes; None picks ``min(4, cpus - 1)`` (0 on a
            single core, where decoding in the main process is fastest).
        device: "auto", "cpu", "cuda" or "cuda:N".
        precision: "auto", "fp32", "bf16" or "fp16" (model weights; part of the store identity).
        store_dtype: "float32" (default) or "float16" on disk.
        force: rebuild a store (or discard an unfinished one) made from other inputs.
        progress: show a progress bar on stderr.
        jpeg_draft: decode large JPEGs at reduced scale (PIL ``draft``, never below the model's
            input size). Several times faster on 2048x1536 images; pixel values differ slightly
            from a full decode, so this is part of the store identity (``decode``).
    """

    batch_size: int = 32
    num_workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
    store_dtype: str = "float32"
    force: bool = False
    progress: bool = True
    jpeg_draft: bool = True

    def __post_init__(self):
        if self.batch_size < 1:
            raise EmbedcytoError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.num_workers is not None and self.num_workers < 0:
            raise EmbedcytoError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.store_dtype not in STORE_DTYPES:
            raise EmbedcytoError(
                f"store dtype must be one of {', '.join(STORE_DTYPES)}, got {self.store_dtype!r}"
            )

    def workers(self) -> int:
        """Decoding processes: ``num_workers``, else ``min(4, cpus - 1)``."""
        from embedcyto.backbones.runtime import default_workers

        return default_workers(self.num_workers)


@dataclass
class ExtractResult:
    """What one extraction did.

    Attributes:
        path: the store file.
        rows: rows in the store.
        computed: rows computed by this call (0 on a cache hit).
        resumed: rows found already done in an interrupted earlier run.
        cache_hit: True when the store already existed with the same inputs.
        seconds: wall time of the call.
        build_seconds: time spent building the model and loading its weights.
        loop_seconds: time spent decoding, forwarding and writing rows.
        skipped: (image path, reason) left out of the store, reported.
        shard: "i/N" when only one shard was computed (``path`` is then its part file, or the
            merged store on a cache hit).
    """

    path: Path
    rows: int
    computed: int = 0
    resumed: int = 0
    cache_hit: bool = False
    seconds: float = 0.0
    build_seconds: float = 0.0
    loop_seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    shard: str | None = None

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 and self.computed else 0.0


class RowImages:
    """A map-style dataset of (row index, image tensor, error) for the rows still to compute.

    Errors are returned, not raised, so that a worker never turns an unreadable image into an
    opaque worker traceback: the main process raises a clean :class:`ImageReadError`.
    """

    def __init__(self, root: Path, paths: list[str], rows: np.ndarray,
                 transform: Callable[[Any], Any], input_size: int, *, jpeg_draft: bool = True):
        self.root = Path(root)
        self.paths = paths
        self.rows = rows
        self.transform = transform
        self.input_size = input_size
        self.draft_size = input_size if jpeg_draft else None
        self._blank = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, Any, str]:
        from embedcyto.datasets import read_image

        row = int(self.rows[i])
        try:
            image = read_image(self.root / self.paths[row], target_size=self.draft_size)
            return row, self.transform(image), ""
        except ImageReadError as err:
            if self._blank is None:
                import torch

                self._blank = torch.zeros(3, self.input_size, self.input_size)
            return row, self._blank, err.reason


def build_provenance(dataset: Dataset, card: Card, weights_sha256: str | None,
                     precision: torch.dtype | str, *, split_hash: str,
                     device: torch.device | str, config: ExtractConfig,
                     weights_path: Path | None = None) -> dict[str, Any]:
    """The store identity of an extraction, plus informational context."""
    from embedcyto.backbones import preprocess_spec
    from embedcyto.store.provenance import library_versions

    return {
        "model": card.name,
        "card": card.identity_dict(),
        "weights_sha256": weights_sha256 or "random-init",
        "preprocessing": preprocess_spec(card),
        "precision": str(precision).replace("torch.", ""),
        "decode": "pil-jpeg-draft" if config.jpeg_draft else "pil-full",
        "split_hash": split_hash,
        "adapter": dataset.adapter,
        "dataset_root": str(dataset.root),
        "weights_path": str(weights_path) if weights_path else None,
        "skipped_images": [list(s) for s in dataset.skipped],
        "device": str(device),
        "batch_size": config.batch_size,
        "num_workers": config.workers(),
        "versions": library_versions(),
    }


def extract_features(dataset: Dataset, card: Card | str, *, store_dir: str | os.PathLike,
                     split_dir: str | os.PathLike | None = None,
                     weights: str | os.PathLike | None = None,
                     weights_dir: str | os.PathLike | None = None, random_init: bool = False,
                     config: ExtractConfig = ExtractConfig(),
                     shard: Shard | str | None = None) -> ExtractResult:
    """Run ``card``'s frozen backbone over ``dataset`` into ``store_dir/<dataset>/<card>.h5``.

    Args:
        dataset: records with splits assigned (``open_dataset``), in store row order.
        card: a backbone card or card name.
        store_dir: the store folder (``cache/`` by default on the command line).
        split_dir: where the dataset's ``splits.json`` lives (generated splits only).
        weights: explicit weights file or folder; else the usual search (see docs/models.md).
        weights_dir: local weights directory.
        random_init: use the real architecture with random weights (benchmarks, tests).
        config: batch size, workers, device, precision, dtype, force.
        shard: an :class:`embedcyto.store.shards.Shard` (or "i/N"): compute only that shard's
            contiguous block of rows into its own part file, to be joined by
            :func:`embedcyto.store.merge.merge_shards`. None computes every row.

    Returns:
        What was done; a cache hit computes nothing and builds no model. With ``shard``,
        ``cache_hit`` means the merged store is already current (the shard's own part being
        finished already only makes ``computed`` 0).

    Raises:
        StaleStoreError: the store exists with other inputs and ``force`` is off.
        StoreLockedError: another process is writing this store.
        WeightsNotFoundError: no weights found (the message says how to get them).
        ImageReadError: an image failed to decode during extraction (rows done so far are kept).
    """
    from embedcyto.backbones import build_backbone, get_card, resolve_device, resolve_precision
    from embedcyto.backbones.weights import resolve_model_weights
    from embedcyto.datasets.splits import dataset_split_hash
    from embedcyto.store import store_path

    start = time.perf_counter()
    card = get_card(card) if isinstance(card, str) else card
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    wpath, sha = resolve_model_weights(card, weights, weights_dir, random_init=random_init)
    provenance = build_provenance(
        dataset, card, sha, dtype, split_hash=dataset_split_hash(dataset, split_dir),
        device=device, config=config, weights_path=wpath,
    )
    path = store_path(store_dir, dataset.name, card.name)
    with _open(path, dataset, provenance, card, config, shard) as writer:
        result = ExtractResult(path=writer.path, rows=len(writer.dataset.records),
                               skipped=list(dataset.skipped), resumed=writer.resumed_rows,
                               shard=None if shard is None else str(shard))
        result.cache_hit = writer.is_cache_hit and (shard is None or writer.path == path)
        pending = writer.pending_rows()
        if len(pending):
            t0 = time.perf_counter()
            backbone = build_backbone(card, weights=wpath, random_init=wpath is None,
                                      device=device, dtype=dtype)
            t1 = time.perf_counter()
            result.computed = embed_rows(backbone, writer.dataset, pending, writer, device,
                                         config)
            result.build_seconds, result.loop_seconds = t1 - t0, time.perf_counter() - t1
        writer.commit()
    result.seconds = time.perf_counter() - start
    return result


def _open(path: Path, dataset: Dataset, provenance: dict[str, Any], card: Card,
          config: ExtractConfig, shard: Shard | str | None):
    """The store's writer, or one shard's writer (its ``dataset`` is the shard's rows)."""
    from embedcyto.store import open_writer
    from embedcyto.store.shards import Shard, open_shard_writer

    kwargs = {"dataset": dataset, "provenance": provenance, "embed_dim": card.embed_dim,
              "dtype": config.store_dtype, "force": config.force}
    if shard is None:
        return open_writer(path, **kwargs)
    shard = Shard.parse(shard) if isinstance(shard, str) else shard
    return open_shard_writer(path, shard=shard, block=config.batch_size, **kwargs)


def make_loader(dataset: Dataset, rows: np.ndarray, card: Card, config: ExtractConfig,
                device: torch.device) -> torch.utils.data.DataLoader:
    """A DataLoader yielding (rows, images, errors) batches in row order.

    Its decoding workers die with the process that started them, so an interrupted run leaves
    no orphan holding memory (and never the store's lock: see ``store/lock.py``).
    """
    import torch

    from embedcyto.backbones import make_transform
    from embedcyto.backbones.runtime import exit_with_parent

    images = RowImages(dataset.root, [r.path for r in dataset.records], rows,
                       make_transform(card), card.input_size, jpeg_draft=config.jpeg_draft)
    workers = min(config.workers(), max(0, len(rows) // config.batch_size))
    return torch.utils.data.DataLoader(
        images, batch_size=config.batch_size, shuffle=False, num_workers=workers,
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
        persistent_workers=False,
        worker_init_fn=functools.partial(exit_with_parent, os.getpid()) if workers else None,
    )


def embed_rows(encoder: Backbone | torch.nn.Module, dataset: Dataset, pending: np.ndarray,
               writer: FeatureWriter, device: torch.device, config: ExtractConfig) -> int:
    """Forward every pending row through ``encoder`` and write each finished batch at once.

    The one embed-and-write loop of embedcyto (frozen extraction and LoRA export alike): a kill
    loses at most one batch, and the writer refuses non-finite features naming their images.
    ``encoder`` needs a ``card`` attribute (its transform and input size).

    Returns:
        The number of rows written.

    Raises:
        ImageReadError: an image failed to decode (the batches written so far are kept).
    """
    import torch
    from tqdm.auto import tqdm

    loader = make_loader(dataset, pending, encoder.card, config, device)
    done = 0
    bar = tqdm(total=len(pending), unit="img", disable=not config.progress,
               desc=f"{dataset.name}/{encoder.card.name}", leave=False)
    try:
        with torch.no_grad():
            for rows, images, errors in loader:
                bad = [(int(r), e) for r, e in zip(rows, errors) if e]
                if bad:
                    row, reason = bad[0]
                    raise ImageReadError(
                        dataset.root / dataset.records[row].path,
                        f"{reason}; the rows computed so far are kept in the unfinished store, "
                        "but they were computed for an image list that includes this file, so "
                        "leaving it out or replacing it needs `force=True`: run again with "
                        "`on_bad_image='skip'` (the default: every image is checked first) and "
                        "`force=True`, or replace the file and run again with `force=True`",
                    )
                feats = encoder(images.to(device, non_blocking=True))
                writer.write(rows.numpy(), feats.float().cpu().numpy())
                done += len(rows)
                bar.update(len(rows))
    finally:
        bar.close()
    return done
