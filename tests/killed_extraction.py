"""Test helper: a real extraction process, slowed down, killed with SIGKILL after N batches.

Imported by the extraction and sharding tests (``from killed_extraction import ...``), the way
``test_store_fixtures`` serves the store tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

CHILD = textwrap.dedent("""
    import sys, time
    from embedcyto import extract as ex
    from embedcyto.backbones.loaders import Backbone
    from embedcyto.datasets import open_dataset
    forward = Backbone.forward
    def slow(self, x):
        time.sleep(0.3)
        return forward(self, x)
    Backbone.forward = slow
    root, split_dir, store, model, shard = sys.argv[1:6]
    ds = open_dataset("sipakmed", root, split_dir=split_dir)
    cfg = ex.ExtractConfig(batch_size=2, num_workers=0, device="cpu", precision="fp32",
                           progress=False)
    ex.extract_features(ds, model, store_dir=store, split_dir=split_dir, config=cfg,
                        shard=shard or None)
    """)


def kill_extraction_after(batches: int, partial: Path, *, root, split_dir, store,
                          model: str = "tiny-clip", shard: str = "",
                          timeout: float = 120.0) -> None:
    """Run a SIPaKMeD extraction (batch 2, fp32, 0.3 s per forward) in a child process and
    kill -9 it once ``partial`` holds ``batches`` finished batch files."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(split_dir), str(store),
                             model, shard], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while len(list(partial.glob("*.npz"))) < batches:
        if proc.poll() is not None:
            raise RuntimeError(f"the extraction ended early: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError("the extraction made no progress")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
