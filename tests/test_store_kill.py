"""A real ``kill -9`` in the middle of an extraction: the lock dies with the process and the
next run resumes with only the missing rows, ending identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_store_fixtures import make_dataset, make_features, provenance, write_full

from embedcyto.errors import StoreLockedError
from embedcyto.store import load_features, open_writer, store_path
from embedcyto.store.paths import partial_dir

N_ROWS = 200
BATCH = 4

CHILD = textwrap.dedent("""
    import sys, time
    from test_store_fixtures import make_dataset, make_features, provenance
    from embedcyto.store import open_writer
    ds = make_dataset({n}, levels=True)
    feats = make_features({n})
    w = open_writer(sys.argv[1], dataset=ds, provenance=provenance(), embed_dim=8)
    pending = w.pending_rows()
    for start in range(0, len(pending), {batch}):
        rows = pending[start:start + {batch}]
        w.write(rows, feats[rows])
        print("batch", start, flush=True)
        time.sleep(0.05)
    w.commit()
    print("done", flush=True)
    """).format(n=N_ROWS, batch=BATCH)


def _child_env() -> dict:
    here = Path(__file__).resolve().parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(here.parent), str(here), env.get("PYTHONPATH", "")])
    return env


def _wait_for_batches(proc: subprocess.Popen, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    seen = 0
    while seen < count:
        if time.monotonic() > deadline:
            raise TimeoutError("the writer subprocess did not report its batches in time")
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"writer subprocess ended early: {proc.stderr.read()}")
        seen += line.startswith("batch")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_kill_9_mid_extraction_then_resume(tmp_path):
    ds = make_dataset(N_ROWS, levels=True)
    reference = store_path(tmp_path / "ref", "toy", "m")
    write_full(reference, ds, batch=BATCH)
    path = store_path(tmp_path / "store", "toy", "m")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )
    try:
        _wait_for_batches(proc, 3)
        with pytest.raises(StoreLockedError, match=f"process {proc.pid} on host"):
            open_writer(path, dataset=ds, provenance=provenance(), embed_dim=8)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert not path.exists() and partial_dir(path).is_dir()

    feats = make_features(N_ROWS)
    with open_writer(path, dataset=ds, provenance=provenance(), embed_dim=8) as w:  # lock is free
        pending = w.pending_rows()
        assert 0 < len(pending) <= N_ROWS - 3 * BATCH
        assert w.resumed_rows == N_ROWS - len(pending)
        w.write(pending, feats[pending])
        w.commit()
    got, ref = load_features(path), load_features(reference)
    np.testing.assert_array_equal(got.X, ref.X)
    assert got.ids.tolist() == ref.ids.tolist()
    assert got.levels.tolist() == ref.levels.tolist()
    assert not partial_dir(path).exists()
