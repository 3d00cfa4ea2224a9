"""The single atomic-write helper: whole file or old file, durable, no temp files left."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from embedcyto import fsio


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.json"
    fsio.atomic_write_json(target, {"b": 1, "a": [1, 2]})
    fsio.atomic_write_json(target, {"c": 3})
    assert target.read_text() == '{\n  "c": 3\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_new_files_follow_the_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        target = fsio.atomic_write_text(tmp_path / "splits.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_failed_write_keeps_old_content_and_removes_temp(tmp_path):
    target = tmp_path / "r.txt"
    target.write_text("old")

    def boom(handle):
        handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fsio.atomic_write(target, boom)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.txt"]


def test_disk_full_becomes_one_clear_error(tmp_path):
    target = tmp_path / "r.txt"

    def full(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(fsio.DiskFullError, match="no space left.*about 2.0 KiB needed"):
        fsio.atomic_write(target, full, needed=2048)
    assert list(tmp_path.iterdir()) == []


def test_remove_stale_tmp_spares_live_processes(tmp_path):
    dead = tmp_path / f".x.json{fsio.TMP_INFIX}999999999-1"
    live = tmp_path / f".x.json{fsio.TMP_INFIX}{os.getpid()}-1"
    dead.write_text("")
    live.write_text("")
    assert fsio.remove_stale_tmp(tmp_path, "x.json") == 1
    assert live.exists() and not dead.exists()
