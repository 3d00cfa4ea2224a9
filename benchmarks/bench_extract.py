"""Extraction throughput: the full ``extract`` path against the bare model forward.

For a ViT-B/16-class card with random weights, on generated images of the real datasets'
sizes (SIPaKMeD-like BMP crops, BCFC-like 256x192 PNGs, MLCC-like 2048x1536 JPEGs), measures in
one run, side by side:

- bare: the model alone on pre-made tensors (same batch size and precision, ``no_grad``);
- extract: ``extract_features`` over the images (decode in DataLoader workers, transform,
  forward, store writes) — its decode+forward+write loop and its end-to-end time;
- MLCC with and without reduced-size JPEG decoding (PIL ``draft``);
- the first run against a cache hit of the same command.

Usage: python benchmarks/bench_extract.py [--model clip] [--images 128] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from embedcyto.backbones import build_backbone, get_card, resolve_device, resolve_precision
from embedcyto.datasets import open_dataset
from embedcyto.datasets.fixtures import make_fixture
from embedcyto.extract import ExtractConfig, extract_features

DATASETS = (("sipakmed", "BMP crops"), ("bcfc", "256x192 PNG"), ("mlcc", "2048x1536 JPEG"))


def bare_forward(card, dtype, batch_size: int, n_images: int, device) -> float:
    """Images per second of the model alone on ready tensors."""
    model = build_backbone(card, random_init=True, device=device, dtype=dtype)
    x = torch.randn(batch_size, 3, card.input_size, card.input_size, device=device)
    with torch.no_grad():
        model(x)  # warm-up
        n_batches = max(1, n_images // batch_size)
        start = time.perf_counter()
        for _ in range(n_batches):
            model(x).float().cpu()
        elapsed = time.perf_counter() - start
    return n_batches * batch_size / elapsed


def run_extract(root: Path, adapter: str, card, store: Path, config: ExtractConfig):
    dataset = open_dataset(adapter, root, split_dir=store / adapter, verify_images=True,
                           verify_size=card.input_size)
    return extract_features(dataset, card, store_dir=store, split_dir=store / adapter,
                            random_init=True, config=config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="clip")
    parser.add_argument("--images", type=int, default=128, help="images per dataset")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    card = get_card(args.model)
    device = resolve_device("auto")
    dtype = resolve_precision(args.precision, device)
    config = ExtractConfig(batch_size=args.batch_size, num_workers=args.workers,
                           device=str(device), precision=args.precision, progress=False)
    print(f"model {card.name} (random weights), {device}, {dtype}, batch {args.batch_size}, "
          f"{config.workers()} decode worker(s), torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        roots = {}
        for adapter, _ in DATASETS:
            n_classes = {"sipakmed": 5, "bcfc": 2, "mlcc": 4}[adapter]
            roots[adapter] = make_fixture(adapter, tmp / adapter, image_size="real",
                                          per_class=max(1, args.images // n_classes))
        bare = bare_forward(card, dtype, args.batch_size, args.images, device)
        print(f"\nbare forward: {bare:.1f} img/s\n")
        print(f"{'dataset':10} {'images':16} {'loop img/s':>10} {'ratio':>6} "
              f"{'end-to-end img/s':>17} {'ratio':>6}")
        first = {}
        for adapter, kind in DATASETS:
            res = first[adapter] = run_extract(roots[adapter], adapter, card, tmp / "s1", config)
            loop = res.computed / res.loop_seconds
            e2e = res.computed / res.seconds
            print(f"{adapter:10} {kind:16} {loop:10.1f} {loop / bare:6.2f} {e2e:17.1f} "
                  f"{e2e / bare:6.2f}")
        full = ExtractConfig(batch_size=args.batch_size, num_workers=args.workers,
                             device=str(device), precision=args.precision, progress=False,
                             jpeg_draft=False)
        res = run_extract(roots["mlcc"], "mlcc", card, tmp / "s2", full)
        loop = res.computed / res.loop_seconds
        print(f"{'mlcc':10} {'full JPEG decode':16} {loop:10.1f} {loop / bare:6.2f} "
              f"{res.computed / res.seconds:17.1f} {res.computed / res.seconds / bare:6.2f}")
        print()
        for adapter, _ in DATASETS:
            start = time.perf_counter()
            hit = run_extract(roots[adapter], adapter, card, tmp / "s1", config)
            hit_s = time.perf_counter() - start
            print(f"{adapter}: first run {first[adapter].seconds:.1f} s, same command again "
                  f"{hit_s:.2f} s (cache hit: {hit.cache_hit}, rows computed: {hit.computed})")


if __name__ == "__main__":
    main()
