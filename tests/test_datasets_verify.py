"""Image checks are remembered between runs and redone only for new or changed files."""

from __future__ import annotations

import os

from embedcyto.datasets import open_dataset
from embedcyto.datasets import verify as verify_mod
from embedcyto.datasets.fixtures import make_fixture


def _count_decodes(monkeypatch):
    calls = []
    real = verify_mod.image_problem

    def counting(path, **kwargs):
        calls.append(path)
        return real(path, **kwargs)

    monkeypatch.setattr(verify_mod, "image_problem", counting)
    return calls


def test_second_check_decodes_nothing_and_changed_files_are_redone(tmp_path, monkeypatch):
    root = make_fixture("bcfc", tmp_path / "data", per_class=5)
    split_dir = tmp_path / "cache" / "bcfc"
    calls = _count_decodes(monkeypatch)
    first = open_dataset("bcfc", root, split_dir=split_dir, verify_images=True)
    assert len(calls) == 10 and not first.skipped
    assert (split_dir / verify_mod.CHECK_FILE).exists()

    calls.clear()
    again = open_dataset("bcfc", root, split_dir=split_dir, verify_images=True)
    assert calls == [] and [r.path for r in again.records] == [r.path for r in first.records]

    victim = root / first.records[3].path
    victim.write_bytes(victim.read_bytes()[:40])
    os.utime(victim, ns=(1, 1))
    calls.clear()
    third = open_dataset("bcfc", root, split_dir=split_dir, verify_images=True)
    assert calls == [victim]
    assert [p for p, _ in third.skipped] == [first.records[3].path]
    assert len(third.records) == 9


def test_a_damaged_check_file_is_ignored_not_trusted(tmp_path, monkeypatch):
    root = make_fixture("bcfc", tmp_path / "data", per_class=3)
    split_dir = tmp_path / "cache" / "bcfc"
    open_dataset("bcfc", root, split_dir=split_dir, verify_images=True)
    (split_dir / verify_mod.CHECK_FILE).write_text("{not json")
    calls = _count_decodes(monkeypatch)
    dataset = open_dataset("bcfc", root, split_dir=split_dir, verify_images=True)
    assert len(calls) == 6 and len(dataset.records) == 6
