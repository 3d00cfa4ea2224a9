"""Measured ms/image of every full-size card (random weights) beside `embedcyto models list`'s
estimate; one step of ``benchmarks/gpu_check.sh``.

Usage: ``python benchmarks/gpu_card_times.py [--device cuda] [--precision bf16] [--batch-size 64]
[--tiny]`` (``--tiny``: the random tiny cards instead, for the CPU dry run).
"""

from __future__ import annotations

import argparse
import time

import torch

from embedcyto.backbones import build_backbone, list_cards, resolve_precision
from embedcyto.backbones.cost import estimated_ms


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = resolve_precision(args.precision, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    hardware = "gpu" if device.type == "cuda" else "cpu"
    for card in (c for c in list_cards() if c.random == args.tiny):
        model = build_backbone(card, random_init=True, device=device, dtype=dtype)
        x = torch.randn(args.batch_size, 3, card.input_size, card.input_size, device=device,
                        dtype=dtype)
        with torch.no_grad():
            model(x)
            sync()
            start = time.perf_counter()
            for _ in range(3):
                model(x)
            sync()
        ms = (time.perf_counter() - start) / (3 * args.batch_size) * 1e3
        try:
            estimate = estimated_ms(card, hardware)
        except KeyError:
            estimate = None
        shown = "n/a" if estimate is None else f"{estimate:7.3f}"
        print(f"{card.name:16s} measured {ms:7.3f} ms/image   estimated {shown}", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
