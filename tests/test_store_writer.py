"""Writer semantics: resume, cache hits, staleness, forced rebuilds, locking and validation."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from test_store_fixtures import make_dataset, make_features, provenance, write_full

from embedcyto.errors import StaleStoreError, StoreError, StoreLockedError
from embedcyto.store import load_features, open_writer, store_path
from embedcyto.store.paths import partial_dir


def _open(path, ds, **kwargs):
    kwargs.setdefault("provenance", provenance())
    kwargs.setdefault("embed_dim", 8)
    return open_writer(path, dataset=ds, **kwargs)


def _rows_equal(a, b):
    np.testing.assert_array_equal(a.X, b.X)
    assert a.ids.tolist() == b.ids.tolist() and a.labels.tolist() == b.labels.tolist()
    assert a.splits.tolist() == b.splits.tolist() and a.groups.tolist() == b.groups.tolist()


def test_resume_after_interruption_computes_only_missing_rows(tmp_path):
    ds = make_dataset(23, levels=True)
    feats = make_features(23)
    reference = store_path(tmp_path / "ref", "toy", "m")
    write_full(reference, ds)
    path = store_path(tmp_path, "toy", "m")
    first = [np.arange(0, 5), np.array([9, 7, 8]), np.arange(15, 20)]
    w = _open(path, ds)
    for rows in first:
        w.write(rows, feats[rows])
    w.close()  # dropped without commit, like a crash between batches
    assert not path.exists() and partial_dir(path).is_dir()
    with _open(path, ds, provenance=provenance(device="cuda")) as w:  # informational change only
        done = np.concatenate(first)
        expected = np.setdiff1d(np.arange(23), done)
        np.testing.assert_array_equal(w.pending_rows(), expected)
        assert w.resumed_rows == len(done) and not w.is_cache_hit
        with pytest.raises(StoreError, match="already written"):
            w.write([0], feats[[0]])
        w.write(expected, feats[expected])
        w.commit()
    assert not partial_dir(path).exists()
    got, ref = load_features(path), load_features(reference)
    _rows_equal(got, ref)
    assert got.levels.tolist() == ref.levels.tolist()
    assert got.provenance["rows_resumed"] == 13


def test_cache_hit_does_not_rewrite(tmp_path):
    ds = make_dataset(12)
    path = store_path(tmp_path, "toy", "m")
    write_full(path, ds)
    before = os.stat(path)
    with _open(path, ds, provenance=provenance(versions={"torch": "3.0"})) as w:
        assert w.is_cache_hit and w.pending_rows().size == 0
        assert w.commit() == path
        with pytest.raises(StoreError, match="cache hit"):
            w.write([0], np.zeros((1, 8), np.float32))
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )


def test_stale_store_is_refused_naming_the_difference(tmp_path):
    ds = make_dataset(12)
    path = store_path(tmp_path, "toy", "m")
    write_full(path, ds)
    with pytest.raises(
        StaleStoreError, match=r'weights_sha256: "abab.*" -> "ffff.*force=True.*store_dir='
    ):
        _open(path, ds, provenance=provenance(weights_sha256="ff" * 32))
    with pytest.raises(StaleStoreError, match="dtype"):
        _open(path, ds, dtype="float16")
    relabelled = make_dataset(12)
    relabelled.records[3] = type(relabelled.records[3])(
        path=relabelled.records[3].path, label=0, split="train"
    )
    with pytest.raises(StaleStoreError, match="rows_sha256"):
        _open(path, relabelled)


def test_partial_with_other_inputs_is_refused_then_discarded_with_force(tmp_path):
    ds = make_dataset(10)
    path = store_path(tmp_path, "toy", "m")
    with _open(path, ds) as w:
        w.write([0, 1, 2], make_features(10)[:3])
    with pytest.raises(StaleStoreError, match=r"unfinished extraction.*precision.*`force=True`"):
        _open(path, ds, provenance=provenance(precision="bf16"))
    with _open(path, ds, provenance=provenance(precision="bf16"), force=True) as w:
        assert w.pending_rows().size == 10


def test_forced_rebuild_keeps_old_store_until_commit(tmp_path):
    ds = make_dataset(10)
    path = store_path(tmp_path, "toy", "m")
    old = write_full(path, ds)
    new_prov = provenance(weights_sha256="ee" * 32)
    w = _open(path, ds, provenance=new_prov, force=True)
    assert w.pending_rows().size == 10 and not w.is_cache_hit
    w.write(np.arange(5), old[:5] + 1)
    w.close()  # interrupted rebuild
    np.testing.assert_array_equal(load_features(path).X, old)  # old store untouched
    with _open(path, ds, provenance=new_prov) as w:  # the same request resumes the rebuild
        np.testing.assert_array_equal(w.pending_rows(), np.arange(5, 10))
        assert w.resumed_rows == 5
    with _open(path, ds, provenance=new_prov, force=True) as w:  # --force always starts clean
        np.testing.assert_array_equal(w.pending_rows(), np.arange(10))
        w.write(np.arange(10), old + 1)
        np.testing.assert_array_equal(load_features(path).X, old)
        w.commit()
    got = load_features(path)
    np.testing.assert_array_equal(got.X, old + 1)
    assert got.provenance["weights_sha256"] == "ee" * 32
    with pytest.raises(StaleStoreError, match="weights_sha256"):  # no rebuild pending: refused
        _open(path, ds, provenance=provenance())


def test_second_writer_is_locked_out_while_the_first_lives(tmp_path):
    ds = make_dataset(6)
    path = store_path(tmp_path, "toy", "m")
    first = _open(path, ds)
    with pytest.raises(StoreLockedError, match=rf"process {os.getpid()} on host .*wait.*`store_dir=`"):
        _open(path, ds)
    first.close()
    with _open(path, ds) as second:
        assert second.pending_rows().size == 6
    with pytest.raises(StoreError, match="closed"):
        second.write([0], make_features(1))


def test_invalid_batches_are_refused_and_nothing_saved(tmp_path):
    ds = make_dataset(6)
    path = store_path(tmp_path, "toy", "m")
    feats = make_features(6)
    with _open(path, ds) as w:
        bad = feats[:3].copy()
        bad[1, 2] = np.nan
        bad[2, 0] = np.inf
        with pytest.raises(
            StoreError, match=r"NaN or infinite values in 2 row\(s\) \[1, 2\].*lsil/cell_0001"
        ):
            w.write([0, 1, 2], bad)
        with pytest.raises(StoreError, match="shape"):
            w.write([0, 1], feats[:3])
        with pytest.raises(StoreError, match="floating point"):
            w.write([0], np.ones((1, 8), dtype=np.int32))
        with pytest.raises(StoreError, match=r"in \[0, 6\)"):
            w.write([6], feats[:1])
        with pytest.raises(StoreError, match="same row twice"):
            w.write([1, 1], feats[:2])
        with pytest.raises(StoreError, match="still missing"):
            w.commit()
        assert w.pending_rows().size == 6
    with pytest.raises(StaleStoreError, match=r'dtype: "float32" -> "float16"'):
        _open(path, ds, dtype="float16")


def test_float16_overflow_is_refused(tmp_path):
    ds = make_dataset(3)
    with _open(store_path(tmp_path, "toy", "m"), ds, dtype="float16") as w:
        big = np.full((1, 8), 1e6, np.float32)
        with pytest.raises(StoreError, match="too large for float16"):
            w.write([0], big)


def test_bad_arguments_are_refused(tmp_path):
    ds = make_dataset(3)
    path = store_path(tmp_path, "toy", "m")
    with pytest.raises(StoreError, match="dtype"):
        _open(path, ds, dtype="float64")
    with pytest.raises(StoreError, match="embed_dim"):
        _open(path, ds, embed_dim=0)
    with pytest.raises(StoreError, match="JSON"):
        _open(path, ds, provenance={"card": object()})
    with pytest.raises(StoreError, match="provenance says embed_dim=4"):
        _open(path, ds, provenance=provenance(embed_dim=4))
    with pytest.raises(StoreError, match="no records"):
        _open(path, make_dataset(0))


def test_leftover_temporary_files_are_cleaned(tmp_path):
    ds = make_dataset(4)
    path = store_path(tmp_path, "toy", "m")
    path.parent.mkdir(parents=True)
    leftover = path.with_name(path.name + ".tmp-99999")
    leftover.write_bytes(b"half a commit")
    with _open(path, ds) as w:
        (partial_dir(path) / "batch-000009-rows0000000-0000001.npz.tmp").write_bytes(b"x")
        assert not leftover.exists()
        w.write(np.arange(4), make_features(4))
    with _open(path, ds) as w:
        assert not list(partial_dir(path).glob("*.tmp"))
        w.commit()
    with h5py.File(path, "r") as f:
        assert bool(f.attrs["complete"])


class _DeviceTensor:
    """Stands in for a GPU or bfloat16 tensor that numpy cannot convert."""

    def __array__(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy")


def test_unconvertible_tensors_get_a_clear_error(tmp_path):
    with _open(store_path(tmp_path, "toy", "m"), make_dataset(3)) as w:
        with pytest.raises(StoreError, match=r"tensor.float\(\).cpu\(\).numpy\(\)"):
            w.write([0], _DeviceTensor())


def test_damaged_batch_file_is_recomputed(tmp_path):
    ds = make_dataset(8)
    path = store_path(tmp_path, "toy", "m")
    feats = make_features(8)
    with _open(path, ds) as w:
        w.write(np.arange(4), feats[:4])
        w.write(np.arange(4, 6), feats[4:6])
    first = sorted(partial_dir(path).glob("batch-*.npz"))[0]
    first.write_bytes(first.read_bytes()[:20])  # e.g. a disk error
    with _open(path, ds) as w:
        np.testing.assert_array_equal(w.pending_rows(), [0, 1, 2, 3, 6, 7])
        w.write(w.pending_rows(), feats[w.pending_rows()])
        w.commit()
    np.testing.assert_array_equal(load_features(path).X, feats)
