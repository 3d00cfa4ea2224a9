"""Writers under hostile conditions: kill -9 with live decoding workers, a kill between
publishing a store and cleaning up, damaged batch files, and a full disk."""

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

from embedcyto import extract as ex
from embedcyto.datasets import open_dataset
from embedcyto.datasets.fixtures import make_fixture
from embedcyto.errors import StoreError
from embedcyto.fsio import DiskFullError
from embedcyto.store import list_stores, load_features, open_writer, store_path
from embedcyto.store.lock import StoreLock
from embedcyto.store.paths import lock_path, partial_dir

pytestmark = pytest.mark.reliability
TESTS = Path(__file__).resolve().parent
ENV = dict(os.environ, PYTHONPATH=f"{TESTS.parent}{os.pathsep}{TESTS}", OMP_NUM_THREADS="1")


def _spawn(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_lock_dies_with_its_process_even_when_forked_children_live_on(tmp_path):
    """The kernel keeps an flock while any descriptor of it is open: children must not hold one."""
    target = tmp_path / "m.h5"
    proc = _spawn("""
        import os, sys, time
        from embedcyto.store.lock import StoreLock
        lock = StoreLock(sys.argv[1] + ".lock", sys.argv[1]).acquire()
        if os.fork() == 0:  # a worker that outlives its parent; it runs once forked:
            print(os.getpid(), flush=True)  # (fork's child handlers have run by then)
            time.sleep(60)
            os._exit(0)
        time.sleep(60)
        """, target)
    child = int(proc.stdout.readline())
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _alive(child)
        with StoreLock(lock_path(target), target) as lock:  # at once, the child still running
            assert lock.held
    finally:
        os.kill(child, signal.SIGKILL)


SLOW_EXTRACTION = """
    import sys, time
    from embedcyto import extract as ex
    from embedcyto.backbones.loaders import Backbone
    from embedcyto.datasets import open_dataset
    forward = Backbone.forward
    def slow(self, x):
        time.sleep(0.4)
        return forward(self, x)
    Backbone.forward = slow
    root, store = sys.argv[1:3]
    ds = open_dataset("sipakmed", root, split_dir=store + "/sipakmed")
    cfg = ex.ExtractConfig(batch_size=2, num_workers=2, device="cpu", precision="fp32",
                           progress=False)
    ex.extract_features(ds, "tiny-vit", store_dir=store, split_dir=store + "/sipakmed",
                        config=cfg)
    """


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(p) for p in text)
    return found


@pytest.mark.slow  # a real extraction process with decoding workers: about 15 s
def test_kill_9_with_live_decoding_workers_then_an_immediate_rerun_proceeds(tmp_path):
    root = make_fixture("sipakmed", tmp_path / "data", per_class=3)
    store = tmp_path / "cache"
    dataset = open_dataset("sipakmed", root, split_dir=store / "sipakmed")
    partial = partial_dir(store_path(store, "sipakmed", "tiny-vit"))
    proc = _spawn(SLOW_EXTRACTION, root, store)
    deadline = time.monotonic() + 120
    while len(list(partial.glob("batch-*.npz"))) < 2:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the extraction made no progress"
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) >= 2  # decoding workers are alive at the moment of the kill
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    config = ex.ExtractConfig(batch_size=2, num_workers=0, device="cpu", precision="fp32",
                              progress=False)
    result = ex.extract_features(dataset, "tiny-vit", store_dir=store,
                                 split_dir=store / "sipakmed", config=config)  # no lock refusal
    assert result.resumed >= 4 and result.resumed + result.computed == len(dataset.records)
    assert load_features(result.path).X.shape == (len(dataset.records), 64)
    time.sleep(0.5)
    assert not [w for w in workers if _alive(w)], "decoding workers outlived their parent"


KILLED_COMMIT = """
    import os, signal, sys
    from test_store_fixtures import make_dataset, make_features, provenance
    from embedcyto.store import open_writer, writer
    publish = writer.write_store_file
    def publish_then_die(*args, **kwargs):
        publish(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)  # before the partial folder is removed
    writer.write_store_file = publish_then_die
    ds = make_dataset(12)
    with open_writer(sys.argv[1], dataset=ds, provenance=provenance(), embed_dim=8) as w:
        w.write(w.pending_rows(), make_features(12))
        w.commit()
    """


def test_kill_between_publishing_and_cleaning_leaves_nothing_visible(tmp_path):
    ds = make_dataset(12)
    path = store_path(tmp_path, ds.name, "m")
    proc = _spawn(KILLED_COMMIT, path)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert path.is_file() and partial_dir(path).is_dir()  # published, then killed
    assert [(i.model, i.state) for i in list_stores(tmp_path)] == [("m", "complete")]
    with open_writer(path, dataset=ds, provenance=provenance(), embed_dim=8) as w:
        assert w.is_cache_hit
    assert not partial_dir(path).exists()  # the cache hit removed the leftover
    np.testing.assert_array_equal(load_features(path).X, make_features(12))


def test_half_discarded_partial_folder_is_cleaned_by_the_next_writer(tmp_path):
    ds = make_dataset(6)
    path = store_path(tmp_path, ds.name, "m")
    write_full(path, ds)
    trash = partial_dir(path).with_name(partial_dir(path).name + ".discard-4242")
    trash.mkdir()
    (trash / "batch-000000-rows0000000-0000005.npz").write_bytes(b"half deleted")
    assert [i.state for i in list_stores(tmp_path)] == ["complete"]
    with open_writer(path, dataset=ds, provenance=provenance(), embed_dim=8) as w:
        assert w.is_cache_hit
    assert not trash.exists()


def _damage_batches(folder: Path, dim: int) -> None:
    files = sorted(folder.glob("batch-*.npz"))
    files[0].write_bytes(b"not a zip file")
    np.savez(files[1], rows=np.array([0, 1]), features=np.zeros((2, dim + 1), np.float32))
    np.savez(files[2], rows=np.array([4, 5]), features=np.full((2, dim), np.nan, np.float32))
    np.savez(files[3], rows=np.array([999, 7]), features=np.zeros((2, dim), np.float32))


def test_damaged_batch_files_never_fail_a_rerun(tmp_path):
    ds = make_dataset(10)
    feats = make_features(10)
    path = store_path(tmp_path, ds.name, "m")
    with open_writer(path, dataset=ds, provenance=provenance(), embed_dim=8) as w:
        for start in range(0, 10, 2):
            w.write(np.arange(start, start + 2), feats[start : start + 2])
    _damage_batches(partial_dir(path), 8)
    with open_writer(path, dataset=ds, provenance=provenance(), embed_dim=8) as w:
        assert w.resumed_rows == 2  # only the intact batch (rows 8, 9) is reused
        pending = w.pending_rows()
        w.write(pending, feats[pending])
        w.commit()
    np.testing.assert_array_equal(load_features(path).X, feats)


def test_force_starts_clean_even_over_an_unreadable_partial_folder(tmp_path):
    ds = make_dataset(6)
    path = store_path(tmp_path, ds.name, "m")
    with open_writer(path, dataset=ds, provenance=provenance(), embed_dim=8) as w:
        w.write(np.arange(2), make_features(2))
    (partial_dir(path) / "manifest.json").write_text("{ broken")
    with pytest.raises(StoreError, match="force=True"):
        open_writer(path, dataset=ds, provenance=provenance(), embed_dim=8)
    with open_writer(path, dataset=ds, provenance=provenance(), embed_dim=8, force=True) as w:
        assert w.pending_rows().size == 6 and w.resumed_rows == 0
        w.write(w.pending_rows(), make_features(6))
        w.commit()
    np.testing.assert_array_equal(load_features(path).X, make_features(6))


@pytest.fixture()
def small_disk(tmp_path):
    """A 3 MiB tmpfs; skipped where the test may not mount one (not root, no tmpfs)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


FULL_DISK_COMMIT = """
    import sys
    from test_store_fixtures import make_dataset, make_features, provenance, write_full
    from embedcyto.errors import EmbedcytoError
    ds = make_dataset(300)
    try:
        write_full(sys.argv[1], ds, dim=1024, batch=100, force=True,
                   prov=provenance(card={"embed_dim": 1024}, weights_sha256="ee" * 32))
    except EmbedcytoError as err:
        print(err, file=sys.stderr)
        sys.exit(1)
    """


def test_full_disk_at_commit_is_one_clear_error_and_keeps_the_old_store(small_disk):
    ds = make_dataset(300)
    path = store_path(small_disk, ds.name, "m")
    old = write_full(path, ds, dim=1024, batch=100,
                     prov=provenance(card={"embed_dim": 1024}))  # 1.2 MB of 3 MiB
    with pytest.raises(DiskFullError, match=r"no space left.*about 1\.\d MiB needed"):
        write_full(path, ds, dim=1024, batch=100, force=True,
                   prov=provenance(card={"embed_dim": 1024}, weights_sha256="ee" * 32))
    proc = _spawn(FULL_DISK_COMMIT, path)  # the same through a process: exit 1, no crash
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert err.strip().count("\n") == 0 and "no space left" in err
    assert not [p.name for p in path.parent.iterdir() if ".tmp-" in p.name]
    assert not [p.name for p in partial_dir(path).iterdir() if ".tmp-" in p.name]
    np.testing.assert_array_equal(load_features(path).X, old)  # the old store is intact
