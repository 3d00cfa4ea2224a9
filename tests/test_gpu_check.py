"""benchmarks/gpu_check.sh: the GPU readiness script lists its steps and runs end to end on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _run(*args, timeout=60):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


def test_gpu_check_lists_every_step_on_real_size_bf16_cards():
    done = _run("--list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 8
    for needed in ("bench_extract.py --model clip ", "bench_extract.py --model clip-l14",
                   "bench_lora.py --models clip,clip-l14 --devices cuda --precision bf16",
                   "bench_shards.py", "-m pytest -q -m gpu", "gpu_attention.py --models clip,",
                   "-m giant  -p no:cacheprovider tests/test_backbones_zoo_full.py",
                   "gpu_card_times.py --device cuda"):
        assert any(needed in line for line in lines), needed
    dry = _run("--dry-run", "--list").stdout
    assert "tiny-clip" in dry and "--devices cpu" in dry and "bf16" not in dry


def test_gpu_check_refuses_unknown_options_and_a_missing_gpu():
    done = _run("--fast")
    assert done.returncode == 2 and "unknown option --fast" in done.stderr
    import torch

    if not torch.cuda.is_available():
        done = _run()
        assert done.returncode == 2 and "--dry-run" in done.stderr


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_on_the_cpu():
    done = _run("--dry-run", timeout=1200)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-2000:]
    assert out.count("=== exit 0") == 8
    assert "bare forward" in out and "end-to-end img/s" in out
    assert "LoRA trains" in out and "peak MiB" in out
    assert "fused SDPA after unfusing" in out and "torch.compile(eager)" in out
    assert "every step passed" in out
