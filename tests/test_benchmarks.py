"""benchmarks/bench_probe.py runs, checks identity against a saved reference, and says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_probe.py"


def _bench(*args):
    return subprocess.run([sys.executable, str(BENCH), "--quick", "--datasets", "mlcc",
                           "--episodes", "5", *args], capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.slow  # three benchmark processes (each imports torch and scikit-learn)
def test_bench_probe_compares_with_sklearn_and_with_a_reference(tmp_path):
    ref = tmp_path / "ref.json"
    first = _bench("--save-reference", str(ref))
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    assert "fp32 matmul:" in out and "load average" in out and "bound" in out
    assert "scikit-learn same protocol" in out and "results identical: True" in out
    saved = json.loads(ref.read_text())
    assert set(saved["mlcc"]) == {"C", "k", "accuracy", "knn_accuracy", "episodes", "levels"}
    # the kNN and episode stages alone, as the scaling runs use them (0.05: --quick's scale)
    again = _bench("--stages", "knn,episodes", "--scale", "0.05", "--reference", str(ref))
    assert again.returncode == 0 and "identical" in again.stdout, again.stdout + again.stderr
    assert "linear" not in again.stdout.split("fp32 matmul")[1].split("total")[1]
    assert "knn" in again.stdout and "us/row, peak RSS" in again.stdout
    assert "episodes changed 0/" in again.stdout
    saved["mlcc"]["k"] = saved["mlcc"]["k"] + 1  # a different choice must be reported
    ref.write_text(json.dumps(saved))
    changed = _bench("--no-sklearn", "--reference", str(ref))
    assert changed.returncode == 1 and "DIFFERENT" in changed.stdout
