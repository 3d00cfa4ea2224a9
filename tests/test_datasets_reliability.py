"""Datasets: nothing silently wrong (split races, hostile files and folders, hostile CSVs).

Each test reproduces a way a dataset could be read wrongly, or a file written unsafely, and
checks that embedcyto now refuses with a clear error or reports a documented skip.
"""

from __future__ import annotations

import multiprocessing
import os
import stat
import time

import pytest

from embedcyto.datasets import open_dataset, split_hash
from embedcyto.datasets import splits as splits_mod
from embedcyto.datasets.fixtures import make_fixture
from embedcyto.datasets.splits import dataset_split_hash
from embedcyto.errors import SplitError

pytestmark = pytest.mark.reliability


# -- split file: one creator at a time, the hash of the split actually used -------------------

def _open_slowly(root, split_dir, seed, queue):
    """Child process: open with a split generation slowed down, so two first runs overlap."""
    real = splits_mod._generate

    def slow(*args):
        time.sleep(0.6)
        return real(*args)

    splits_mod._generate = slow
    try:
        ds = open_dataset("folder", root, split_dir=split_dir, seed=seed)
        queue.put((seed, "ok", dataset_split_hash(ds, split_dir),
                   {r.path: r.split for r in ds.records}))
    except SplitError as err:
        queue.put((seed, "refused", str(err), None))


def test_two_first_runs_with_other_seeds_do_not_both_succeed(tmp_path):
    root = make_fixture("folder", tmp_path / "data", per_class=8)
    split_dir = tmp_path / "cache" / "data"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_open_slowly, args=(root, split_dir, seed, queue))
             for seed in (0, 1)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    outcomes = [r[1] for r in results]
    assert sorted(outcomes) == ["ok", "refused"], results
    (seed, _, digest, assignments), = [r for r in results if r[1] == "ok"]
    refused = next(r for r in results if r[1] == "refused")
    assert f"made with seed {seed}" in refused[2]
    saved = splits_mod.load_split_file(split_dir / "splits.json")
    assert saved["seed"] == seed and saved["assignments"] == assignments
    assert digest == split_hash(split_dir / "splits.json")


def test_the_recorded_hash_is_the_split_the_records_carry_not_a_later_file(tmp_path):
    root = make_fixture("folder", tmp_path / "data", per_class=8)
    split_dir = tmp_path / "cache" / "data"
    first = open_dataset("folder", root, split_dir=split_dir, seed=0)
    used = split_hash(split_dir / "splits.json")
    (split_dir / "splits.json").unlink()  # another run replaces the file with another seed's
    open_dataset("folder", root, split_dir=split_dir, seed=1)
    assert split_hash(split_dir / "splits.json") != used
    assert dataset_split_hash(first, split_dir) == used
    first.split_hash = None  # records split by other means must agree with the saved file
    with pytest.raises(SplitError, match="differ from"):
        dataset_split_hash(first, split_dir)


def test_a_lock_held_by_a_dead_process_does_not_block(tmp_path):
    root = make_fixture("folder", tmp_path / "data", per_class=4)
    split_dir = tmp_path / "cache" / "data"
    pid = os.fork()
    if pid == 0:  # child: take the lock and die without releasing it
        with splits_mod.split_file_lock(split_dir):
            os._exit(0)
    os.waitpid(pid, 0)
    start = time.monotonic()
    open_dataset("folder", root, split_dir=split_dir)
    assert time.monotonic() - start < 5


def test_a_live_holder_makes_the_wait_end_with_a_clear_error(tmp_path):
    split_dir = tmp_path / "cache" / "data"
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()

    def hold():
        with splits_mod.split_file_lock(split_dir):
            ready.set()
            done.wait(30)

    proc = ctx.Process(target=hold)
    proc.start()
    try:
        assert ready.wait(30)
        with pytest.raises(SplitError, match="another process has been creating"):
            with splits_mod.split_file_lock(split_dir, wait_s=0.3):
                pass
    finally:
        done.set()
        proc.join(30)


def test_split_file_is_readable_by_the_group_and_written_durably(tmp_path, monkeypatch):
    root = make_fixture("folder", tmp_path / "data", per_class=4)
    split_dir = tmp_path / "cache" / "data"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    old = os.umask(0o022)
    try:
        open_dataset("folder", root, split_dir=split_dir)
    finally:
        os.umask(old)
    mode = stat.S_IMODE((split_dir / "splits.json").stat().st_mode)
    assert mode == 0o644
    assert synced  # file and folder fsynced
    assert not [p for p in split_dir.iterdir() if ".tmp-" in p.name]
