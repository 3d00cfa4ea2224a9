"""Attention kernels and torch.compile, per card: what ``benchmarks/gpu_check.sh`` reports.

For each card (random weights of the real architecture), in the requested precision:

* which scaled-dot-product-attention kernels a forward pass runs, for the card as built
  (fused q/k/v) and after :func:`embedcyto.lora.unfuse.unfuse_attention` (what LoRA trains):
  the ``aten::_scaled_dot_product_*`` operators in a ``torch.profiler`` trace (flash, memory-
  efficient, cuDNN, or the CPU flash kernel), and ``nn.MultiheadAttention``'s fused inference
  path (``aten::_native_multi_head_attention``). Unfused q/k/v must still reach a fused kernel; no
  such operator means attention ran as separate matrix products and a softmax;
* the forward throughput eagerly and under ``torch.compile`` (after its compilation, whose time
  is printed apart), so the gain of compiling is measured, not assumed.

Usage: ``python benchmarks/gpu_attention.py [--models clip,clip-l14] [--device cuda]
[--precision bf16] [--batch-size 32] [--steps 10] [--compile-backend inductor]``.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from embedcyto.backbones import build_backbone, resolve_precision
from embedcyto.lora.unfuse import unfuse_attention


def sdpa_kernels(model, x) -> list[str]:
    """Names of the fused attention operators one forward pass of ``model`` runs."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if x.device.type == "cuda" else [])
    with torch.no_grad(), profile(activities=activities) as prof:
        model(x)
    return sorted({e.key for e in prof.key_averages()
                   if e.key.startswith(("aten::_scaled_dot_product", "aten::_native_multi_head"))
                   or "flash" in e.key.lower() or "efficient_attention" in e.key})


def images_per_second(model, x, steps: int) -> float:
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        model(x)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            model(x)
        sync()
    return steps * x.shape[0] / (time.perf_counter() - start)


def check_card(name: str, args) -> None:
    device = torch.device(args.device)
    dtype = resolve_precision(args.precision, device)
    model = build_backbone(name, random_init=True, device=device, dtype=dtype).eval()
    size = model.card.input_size
    x = torch.randn(args.batch_size, 3, size, size, device=device, dtype=dtype)
    unfused = copy.deepcopy(model)
    n = unfuse_attention(unfused)
    fused_ops, unfused_ops = sdpa_kernels(model, x), sdpa_kernels(unfused, x)
    print(f"{name}: {dtype}, {device}, batch {args.batch_size}")
    print(f"  attention kernels, as built:      {', '.join(fused_ops) or 'none (unfused math)'}")
    print(f"  attention kernels, {n} unfused:   {', '.join(unfused_ops) or 'none (unfused math)'}"
          f"  -> fused SDPA after unfusing: {'yes' if unfused_ops else 'NO'}")
    eager = images_per_second(model, x, args.steps)
    start = time.perf_counter()
    compiled = torch.compile(model, backend=args.compile_backend)
    with torch.no_grad():
        compiled(x)
    compile_s = time.perf_counter() - start
    fast = images_per_second(compiled, x, args.steps)
    print(f"  forward: eager {eager:.1f} img/s, torch.compile({args.compile_backend}) "
          f"{fast:.1f} img/s ({fast / eager:.2f}x; compilation {compile_s:.1f} s)", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="clip,clip-l14")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile-backend", default="inductor")
    args = parser.parse_args(argv)
    for name in args.models.split(","):
        check_card(name, args)


if __name__ == "__main__":
    main()
