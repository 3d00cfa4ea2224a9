"""bf16 against fp32: how much the frozen features change, on random-weight real-size cards.

``--precision auto`` holds the frozen backbone in bf16 where the hardware has bf16 units; the
study's authors ran in fp32 (fp16 autocast for CLIP). For each card this builds the real
architecture with random weights (the same seed, so the same weights in both precisions),
embeds the same generated cell images (SIPaKMeD-like crops through the card's own transform)
in fp32 and in bf16, and reports per image the cosine similarity and the relative L2
difference ``|f_bf16 - f_fp32| / |f_fp32|`` (median and worst over the images).

Random weights are not trained weights: the size of the difference depends on the activation
statistics, so take these as the order of magnitude, not the value for pretrained models.

Usage: python benchmarks/bench_precision.py [--models clip,vit,biomedclip,quilt,uni,clip-l14]
       [--images 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from embedcyto.backbones import build_backbone, get_card, make_transform
from embedcyto.backbones.runtime import torch_threads
from embedcyto.datasets import open_dataset, read_image
from embedcyto.datasets.fixtures import make_fixture


def images(card, n: int, folder: Path) -> torch.Tensor:
    """``n`` generated SIPaKMeD-like cells through the card's evaluation transform."""
    root = make_fixture("sipakmed", folder / "sipakmed", per_class=max(1, -(-n // 5)), seed=0)
    dataset = open_dataset("sipakmed", root)
    transform = make_transform(card, train=False)
    picked = dataset.records[:n]
    return torch.stack([transform(read_image(root / r.path, target_size=card.input_size))
                        for r in picked])


def features(card, dtype, x: torch.Tensor) -> np.ndarray:
    model = build_backbone(card, random_init=True, device="cpu", dtype=dtype, seed=0)
    with torch.no_grad():
        return model(x.to(dtype)).float().numpy().astype(np.float64)


def compare(name: str, n: int, folder: Path) -> dict:
    card = get_card(name)
    x = images(card, n, folder)
    start = time.perf_counter()
    full = features(card, torch.float32, x)
    half = features(card, torch.bfloat16, x)
    cos = np.sum(full * half, axis=1) / (np.linalg.norm(full, axis=1)
                                         * np.linalg.norm(half, axis=1))
    rel = np.linalg.norm(half - full, axis=1) / np.linalg.norm(full, axis=1)
    return {"model": name, "n": len(x), "cos_median": float(np.median(cos)),
            "cos_min": float(cos.min()), "rel_l2_median": float(np.median(rel)),
            "rel_l2_max": float(rel.max()), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="clip,vit,biomedclip,quilt,uni,clip-l14")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print("| model | images | cosine (median / min) | relative L2 (median / max) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, torch_threads(args.threads):
        for name in args.models.split(","):
            r = compare(name.strip(), args.images, Path(tmp))
            print(f"| {r['model']} | {r['n']} | {r['cos_median']:.5f} / {r['cos_min']:.5f} | "
                  f"{r['rel_l2_median']:.4f} / {r['rel_l2_max']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
