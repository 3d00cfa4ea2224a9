"""Write a finished LoRA run's adapted embeddings into the feature store as a new model variant.

The variant is named ``<card>+lora-<mode>-s<seed>`` (e.g. ``clip+lora-shots-4-s1``) and lives
beside the frozen stores (``<store>/<dataset>/<variant>.h5``), so ``embedcyto probe`` treats it
like any other model. Its provenance is an extraction's (base card, base weights hash,
preprocessing, precision, split, dataset fingerprint) plus ``base_model``, ``adapter_sha256``
(hash of the adapter's safetensors file) and ``lora_run`` (the run's configuration): a store made
from another adapter is never silently reused.

The adapter is merged into the (unfused) backbone before the pass, which gives the adapted
model's output up to float rounding, at the frozen model's speed, in the precision the run
trained in.
"""

from __future__ import annotations

import time
from pathlib import Path

from embedcyto.datasets.records import Dataset
from embedcyto.errors import LoraError, StaleStoreError
from embedcyto.lora import runs
from embedcyto.lora.config import LoraRunConfig

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def adapter_sha256(run_dir) -> str:
    """SHA-256 of the run's adapter weights file."""
    from embedcyto.backbones.weights import file_sha256

    return file_sha256(Path(run_dir) / runs.ADAPTER_DIR / ADAPTER_WEIGHTS)


def _provenance(dataset, info, config, sha, dtype, device, split_dir, extract_config):
    from embedcyto.backbones import get_card
    from embedcyto.datasets.splits import dataset_split_hash
    from embedcyto.extract import build_provenance

    card = get_card(config.model)
    base_sha = None if info["weights_sha256"] == "random-init" else info["weights_sha256"]
    wpath = Path(info["weights_path"]) if info.get("weights_path") else None
    provenance = build_provenance(dataset, card, base_sha, dtype,
                                  split_hash=dataset_split_hash(dataset, split_dir),
                                  device=device, config=extract_config, weights_path=wpath)
    provenance.update(model=config.variant, base_model=card.name, adapter_sha256=sha,
                      lora_run=config.identity())
    return provenance


def export_features(dataset: Dataset, run_dir, *, store_dir, split_dir=None, weights=None,
                    weights_dir=None, batch_size: int = 32, num_workers: int | None = None,
                    device: str | None = None, force: bool = False, progress: bool = False):
    """Embed every image of ``dataset`` with the run's adapted backbone into the store.

    Args:
        dataset: the dataset the run was trained on (same records and split).
        run_dir: a finished run folder.
        store_dir: the store folder; the file is ``<store_dir>/<dataset>/<variant>.h5``.
        split_dir: where the dataset's ``splits.json`` lives (generated splits only).
        weights, weights_dir: the backbone weights (default: those the run recorded).
        device: default: the run's device setting.
        force: replace a variant store made from other inputs (another adapter).

    Returns:
        An :class:`embedcyto.extract.ExtractResult`; a matching finished store is a cache hit.

    Raises:
        LoraError: not a finished run, another dataset, or a variant store from another run.
    """
    import torch

    from embedcyto.backbones import resolve_device
    from embedcyto.extract import ExtractConfig, ExtractResult, embed_rows
    from embedcyto.store import open_writer, store_path

    start = time.perf_counter()
    info = runs.read_run_config(run_dir)
    config = LoraRunConfig.from_dict(info["config"])
    if dataset.fingerprint() != info["identity"]["dataset_fingerprint"]:
        raise LoraError(f"{dataset.name} at {dataset.root} is not the dataset the run in "
                        f"{run_dir} was trained on (its images, labels or split differ)")
    device = resolve_device(device or config.device)
    dtype = getattr(torch, info["resolved"]["precision"])
    extract_config = ExtractConfig(batch_size=batch_size, num_workers=num_workers,
                                   device=str(device), precision=config.precision,
                                   progress=progress)
    sha = adapter_sha256(run_dir)
    provenance = _provenance(dataset, info, config, sha, dtype, device, split_dir,
                             extract_config)
    path = store_path(store_dir, dataset.name, config.variant)
    result = ExtractResult(path=path, rows=len(dataset.records), skipped=list(dataset.skipped))
    try:
        writer = open_writer(path, dataset=dataset, provenance=provenance,
                             embed_dim=info["card"]["embed_dim"], force=force)
    except StaleStoreError as err:
        raise LoraError(f"{path} holds features of another LoRA run or backbone ({err}); "
                        "delete that file or export into another store folder (`store_dir=`)") from err
    with writer:
        result.resumed = writer.resumed_rows
        result.cache_hit = writer.is_cache_hit
        pending = writer.pending_rows()
        if not writer.is_cache_hit and len(pending):
            encoder = _merged_encoder(run_dir, weights, weights_dir, device, dtype)
            result.computed = embed_rows(encoder, dataset, pending, writer, device,
                                         extract_config)
        writer.commit()
    result.seconds = time.perf_counter() - start
    return result


def _merged_encoder(run_dir, weights, weights_dir, device, dtype):
    """The run's backbone with its adapter merged in, in ``dtype``, ready for inference."""
    from embedcyto.lora.adapters import merge_adapter
    from embedcyto.lora.model import load_classifier

    model = load_classifier(run_dir, weights=weights, weights_dir=weights_dir, device=device,
                            dtype=dtype)
    return merge_adapter(model.encoder).to(dtype=dtype).eval()
