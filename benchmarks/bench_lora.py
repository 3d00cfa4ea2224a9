"""Benchmark: one LoRA q/v training step against one full fine-tuning step of the same model.

For each ViT-B/16-class card (random weights of the real architecture: ``clip`` = open_clip
ViT-B/16, ``vit`` = timm ViT-B/16) and each device (the CPU, and the GPU when torch sees one),
both modes train the same classifier (backbone + linear head) on the same batch of synthetic
224 px images in the requested precision (``auto``: bf16 on CUDA and on CPUs with bf16 matrix
units), with float32 trained parameters and AdamW, each the way it is usually done:

* ``lora``: as ``embedcyto lora`` trains, rank 2 on q and v; the frozen weights are held in
  the precision, only the float32 adapters and head train;
* ``full``: every backbone parameter trains (plus the head): float32 master weights and
  ``torch.autocast`` in the precision (mixed-precision training).

Reported per mode: training images/s (after one untimed warm-up step), peak memory, trainable
parameters, and for LoRA the formula 2·L·r·2D beside the count. Memory on the CPU is the
growth of the process's peak resident set from just before the first training step to the end,
each mode in its own fresh subprocess (tracemalloc does not see torch's allocations). On Linux
the kernel's peak mark is reset first (``/proc/self/clear_refs``, then ``VmHWM``), so that the
transient peak of building the model does not hide the training peak; elsewhere the growth of
``resource.getrusage`` maxrss is used. On a GPU it is ``torch.cuda.max_memory_allocated``
during training. Image decoding is not part of the measurement (the images are random tensors).

Usage: ``python benchmarks/bench_lora.py [--models clip,vit] [--batch-size 8] [--steps 3]
[--precision auto] [--devices cpu,cuda] [--threads N]``. The default (clip, batch 8, 3 steps,
one thread) takes a few minutes on 2 CPU cores. One thread is the default because on a machine
whose cores are shared, torch's threads wait on each other and two ran several times slower
than one; pass ``--threads 0`` for torch's default on a machine of your own.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time

MODES = ("lora", "full")


def _status_mib(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process from /proc (Linux), in MiB."""
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _start_peak() -> tuple[float, str]:
    """Baseline for the training peak: reset the kernel's peak-RSS mark where Linux allows.

    Building a LoRA model copies the backbone, so the peak reached while building can exceed
    what training adds; resetting the mark (``clear_refs`` 5) measures training alone. Without
    it the growth of ``getrusage`` maxrss is used, which can read low for that reason.
    """
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        rss = _status_mib("VmRSS")
        if rss is not None:
            return rss, "peak RSS growth during training (VmHWM after clear_refs)"
    except OSError:
        pass
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "growth of getrusage maxrss during training")


def _end_peak(kind: str) -> float:
    if kind.startswith("peak RSS"):
        return _status_mib("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _build(model_name: str, mode: str, device, dtype):
    """LoRA as ``embedcyto lora`` trains it (frozen weights in ``dtype``, adapters float32), or
    the same classifier with every weight trainable (float32 master weights)."""
    from embedcyto.backbones import build_backbone
    from embedcyto.lora.adapters import LoraSettings
    from embedcyto.lora.model import LoraClassifier, build_classifier, make_head

    if mode == "lora":
        backbone = build_backbone(model_name, random_init=True, device=device, dtype=dtype)
        return build_classifier(backbone, LoraSettings(), 5, seed=0)
    backbone = build_backbone(model_name, random_init=True, device=device)
    backbone.requires_grad_(True)
    return LoraClassifier(backbone, make_head(backbone.card.embed_dim, 5, 0).to(device))


def worker(args) -> dict:
    """Measure one (model, mode, device) in this process; returns the JSON result."""
    import torch

    from embedcyto.backbones import get_card, resolve_device, resolve_precision
    from embedcyto.lora.adapters import expected_lora_parameters, trainable_parameters

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    card = get_card(args.model)
    torch.manual_seed(0)
    model = _build(args.model, args.mode, device, dtype).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(0)
    size = card.input_size
    images = torch.randn(args.batch_size, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, 5, (args.batch_size,), generator=generator).to(device)

    autocast = args.mode == "full" and dtype != torch.float32

    def step():
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=autocast):
            logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    cuda = device.type == "cuda"
    rss_before, memory_kind = _start_peak()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated() / 2**20
    step()  # warm-up: allocates gradients and optimizer state, picks kernels
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {"model": args.model, "mode": args.mode, "device": str(device),
           "precision": str(dtype).replace("torch.", ""), "batch_size": args.batch_size,
           "steps": args.steps, "threads": torch.get_num_threads(),
           "images_per_second": args.batch_size * args.steps / seconds,
           "seconds_per_step": seconds / args.steps,
           "trainable_parameters": trainable_parameters(model),
           "backbone_parameters": sum(p.numel() for p in model.encoder.parameters())}
    if args.mode == "lora":
        out["lora_parameters"] = sum(p.numel() for n, p in model.named_parameters()
                                     if "lora_" in n)
        out["lora_formula"] = expected_lora_parameters(card.width, card.depth, 2, 2)
    if cuda:
        out["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["model_memory_mib"] = base_alloc
        out["memory_kind"] = "torch.cuda.max_memory_allocated"
    else:
        out["peak_memory_mib"] = _end_peak(memory_kind) - rss_before
        out["model_memory_mib"] = rss_before
        out["memory_kind"] = memory_kind
    return out


def _run_worker(model: str, mode: str, device: str, args) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--model", model,
               "--mode", mode, "--device", device, "--batch-size", str(args.batch_size),
               "--steps", str(args.steps), "--precision", args.precision,
               "--threads", str(args.threads or 0)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {model}/{mode}/{device} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> str:
    lines = [f"{'model':<6} {'device':<6} {'prec':<9} {'mode':<5} {'batch':>5} {'img/s':>8} "
             f"{'s/step':>7} {'peak MiB':>9} {'trainable':>12}  check"]
    for r in rows:
        check = ""
        if r["mode"] == "lora":
            head = r["trainable_parameters"] - r["lora_parameters"]
            check = (f"LoRA {r['lora_parameters']:,} = 2·L·r·2D = {r['lora_formula']:,}"
                     f" (+{head:,} head)")
        lines.append(f"{r['model']:<6} {r['device']:<6} {r['precision']:<9} {r['mode']:<5} "
                     f"{r['batch_size']:>5} {r['images_per_second']:>8.2f} "
                     f"{r['seconds_per_step']:>7.2f} {r['peak_memory_mib']:>9.0f} "
                     f"{r['trainable_parameters']:>12,}  {check}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="clip", help="comma-separated cards")
    parser.add_argument("--devices", default=None,
                        help="comma-separated devices (default: cpu, plus cuda when present)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on the CPU (0: torch's default)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    import torch

    devices = args.devices.split(",") if args.devices else (
        ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    for model in args.models.split(","):
        for device in devices:
            for mode in MODES:
                rows.append(_run_worker(model, mode, device, args))
                print(_table(rows[-1:]).splitlines()[1], flush=True)
    print()
    print(_table(rows))
    for model in args.models.split(","):
        for device in devices:
            pair = {r["mode"]: r for r in rows if r["model"] == model and r["device"] == device}
            speed = pair["lora"]["images_per_second"] / pair["full"]["images_per_second"]
            memory = pair["full"]["peak_memory_mib"] / max(pair["lora"]["peak_memory_mib"], 1)
            share = (pair["lora"]["trainable_parameters"]
                     / pair["full"]["trainable_parameters"])
            print(f"{model} on {device}: LoRA trains {speed:.2f}x the images/s of full "
                  f"fine-tuning with {1 / memory:.2f}x its training memory ({share:.2e} of its "
                  "trainable parameters)")


if __name__ == "__main__":
    main()
