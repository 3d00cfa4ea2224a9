"""Sharded extraction throughput: one process against ``torchrun`` with several ranks.

Runs the real command line end to end (process start, model build, decode, forward, store
writes and, for torchrun, the merge on rank 0) over generated SIPaKMeD-like images, into fresh
store folders, and prints images per second of each:

- CPU: one process with every core's threads, then ``--procs`` ranks (gloo) sharing the cores
  (``OMP_NUM_THREADS`` = cores / ranks each). On few cores this does not double: the ranks
  share the same cores, and only the Python-side work (decode, transforms, writes) overlaps
  better. It pays on machines with many cores or several sockets.
- GPU, when more than one CUDA device is present: one process on ``cuda:0`` against one rank
  per device (NCCL), where the gain is close to the number of GPUs once decoding keeps up.

The merged store is checked against the single-process one (same ids, features within float
tolerance), so the figure is for a correct result.

Usage: python benchmarks/bench_shards.py [--model tiny-vit] [--images 96] [--procs 2]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from embedcyto.datasets.fixtures import make_fixture
from embedcyto.store import load_features, store_path


def run(command: list[str], threads: int) -> tuple[float, float]:
    """(wall seconds of the command, seconds it reports for the extraction itself).

    The second leaves out interpreter start-up, imports and the process-group rendezvous:
    the part that grows with the number of images.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"command failed: {' '.join(command)}\n{done.stdout}\n{done.stderr}")
    match = re.search(r"computed(?:, \d+ resumed)? in ([\d.]+) s", done.stdout)
    return seconds, float(match.group(1)) if match else float("nan")


def extract_args(args, root: Path, store: Path, device: str) -> list[str]:
    return ["extract", "--model", args.model, "--dataset", "sipakmed", "--root", str(root),
            "--store", str(store), "--random-weights", "--precision", args.precision,
            "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--quiet",
            "--device", device]


def compare(args, store_a: Path, store_b: Path) -> str:
    a = load_features(store_path(store_a, "sipakmed", args.model))
    b = load_features(store_path(store_b, "sipakmed", args.model))
    if list(a.ids) != list(b.ids):
        return "ROWS DIFFER"
    diff = float(np.abs(a.X.astype(np.float64) - b.X).max())
    return "identical features" if diff == 0 else f"max |difference| {diff:.2e}"


def bench(args, root: Path, tmp: Path, device: str, procs: int, threads: int) -> None:
    exe = str(Path(sys.executable).with_name("embedcyto"))
    one = run([exe, *extract_args(args, root, tmp / f"one-{device}", device)], threads)
    many = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", str(procs), "--no-python", exe,
                *extract_args(args, root, tmp / f"many-{device}", device)],
               max(1, threads // procs) if device == "cpu" else threads)
    n = args.images
    print(f"{device}, {procs} ranks against 1 process "
          f"({compare(args, tmp / f'one-{device}', tmp / f'many-{device}')}):")
    for label, i in (("end to end (start-up included)", 0), ("extraction (build + loop + merge)", 1)):
        print(f"  {label:34} 1 process {n / one[i]:7.1f} img/s ({one[i]:6.1f} s)   "
              f"{procs} ranks {n / many[i]:7.1f} img/s ({many[i]:6.1f} s)   "
              f"speed-up {one[i] / many[i]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-vit")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--procs", type=int, default=2, help="CPU ranks")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="decode workers per process")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()

    import torch

    cores = os.cpu_count() or 1
    print(f"model {args.model} (random weights), {args.images} images, batch "
          f"{args.batch_size}, {args.precision}, {cores} cores, {args.workers} decode workers")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = make_fixture("sipakmed", tmp / "data", image_size="real",
                            per_class=max(1, args.images // 5))
        args.images = sum(1 for p in root.rglob("*.bmp") if "CROPPED" in p.parts)
        run([str(Path(sys.executable).with_name("embedcyto")),
             *extract_args(args, root, tmp / "warm-up", "cpu")], cores)  # file caches, imports
        bench(args, root, tmp, "cpu", args.procs, cores)
        gpus = torch.cuda.device_count()
        if gpus > 1:
            bench(args, root, tmp, "cuda", gpus, cores)
        else:
            print(f"GPU: {gpus} CUDA device(s); the multi-GPU comparison needs at least 2")


if __name__ == "__main__":
    main()
