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
from embedcyto.errors import DatasetError, ImageReadError, SplitError

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


# -- images: symlinks, folders named like images, huge images, replaced images ---------------

def test_a_symlink_leaving_the_root_is_refused_by_folder_adapters_too(tmp_path):
    outside = make_fixture("folder", tmp_path / "elsewhere", per_class=1)
    root = make_fixture("folder", tmp_path / "data", per_class=3)
    link = root / "negative" / "extra.png"
    link.symlink_to(next((outside / "negative").glob("*.png")))
    with pytest.raises(DatasetError, match="extra.png is a symlink to .*outside the dataset root"):
        open_dataset("folder", root)
    link.unlink()
    (root / "low_grade_link").symlink_to(outside / "low_grade", target_is_directory=True)
    with pytest.raises(DatasetError, match="outside the dataset root"):
        open_dataset("folder", root)
    (root / "low_grade_link").unlink()
    bcfc = make_fixture("bcfc", tmp_path / "bcfc", per_class=2)
    (bcfc / "benign" / "benign_x.png").symlink_to(next((outside / "negative").glob("*.png")))
    with pytest.raises(DatasetError, match="outside the dataset root"):
        open_dataset("bcfc", bcfc)


def test_broken_symlinks_and_folders_named_like_images_are_reported(tmp_path):
    root = make_fixture("folder", tmp_path / "data", per_class=3)
    (root / "negative" / "gone.png").symlink_to(tmp_path / "nothing.png")
    (root / "negative" / "x.png").mkdir()
    inside = next((root / "low_grade").glob("*.png"))
    (root / "negative" / "alias.png").symlink_to(inside)  # inside the root: kept
    (root / "stray.png").write_bytes(inside.read_bytes())  # beside the class folders
    ds = open_dataset("folder", root)
    reasons = dict(ds.skipped)
    assert reasons["negative/gone.png"] == "a symlink whose target is missing"
    assert reasons["negative/x.png"].startswith("a folder named like an image")
    assert "class is unknown" in reasons["stray.png"]
    assert "negative/alias.png" in {r.path for r in ds.records}
    assert len(ds.records) == 10
    sip = make_fixture("sipakmed", tmp_path / "sip", per_class=2)
    (sip / "im_Parabasal" / "CROPPED" / "009_01.bmp").mkdir()
    assert "im_Parabasal/CROPPED/009_01.bmp" in dict(open_dataset("sipakmed", sip).skipped)


def test_a_listed_image_that_is_a_folder_or_a_broken_link_says_so(tmp_path):
    root = make_fixture("csv", tmp_path / "tab", per_class=3)
    rows = (root / "labels.csv").read_text().splitlines()
    first, second = (r.split(",")[0] for r in rows[1:3])
    (root / first).unlink()
    (root / first).mkdir()
    (root / second).unlink()
    (root / second).symlink_to(root / "nothing.png")
    reasons = dict(open_dataset("csv", root).skipped)
    assert reasons[first] == "listed in the CSV but it is a folder, not an image file"
    assert reasons[second] == "listed in the CSV but it is a symlink whose target is missing"


def test_a_huge_image_is_refused_from_its_header_with_a_clear_reason(tmp_path, monkeypatch):
    from PIL import Image

    from embedcyto.datasets import images

    root = make_fixture("folder", tmp_path / "data", per_class=3)
    Image.new("L", (10000, 10000)).save(root / "negative" / "huge.png")
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load",
                        lambda self: decoded.append(self.size) or real_load(self))
    with _no_warnings():
        ds = open_dataset("folder", root, verify_images=True)
    reason = dict(ds.skipped)["negative/huge.png"]
    assert "10000x10000 is 100 megapixels" in reason and "downscale" in reason
    assert (10000, 10000) not in decoded
    with pytest.raises(ImageReadError, match="megapixels"):
        images.read_image(root / "negative" / "huge.png")


def _no_warnings():
    import warnings

    manager = warnings.catch_warnings()

    class _Strict:
        def __enter__(self):
            manager.__enter__()
            warnings.simplefilter("error")

        def __exit__(self, *exc):
            return manager.__exit__(*exc)

    return _Strict()


def _same_size_other_image(victim, donor) -> bytes:
    """``donor``'s PNG padded with bytes after its end marker to ``victim``'s size: a valid,
    different image of exactly the same size."""
    data = donor.read_bytes()
    size = victim.stat().st_size
    assert len(data) < size
    return data + b"\0" * (size - len(data))


def test_an_image_replaced_with_same_size_and_mtime_is_seen(tmp_path):
    root = make_fixture("folder", tmp_path / "data", per_class=4, image_size=48)
    split_dir = tmp_path / "cache" / "data"
    first = open_dataset("folder", root, split_dir=split_dir, verify_images=True)
    before = first.fingerprint()
    files = sorted((root / "negative").glob("*.png"), key=lambda p: p.stat().st_size)
    victim, donor = files[-1], files[0]
    st = victim.stat()
    victim.write_bytes(_same_size_other_image(victim, donor))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns
    second = open_dataset("folder", root, split_dir=split_dir, verify_images=True)
    assert not second.skipped and second.fingerprint() != before  # the store will be rebuilt
    data = bytearray(victim.read_bytes())
    data[60:400] = bytes(340)  # now corrupt, still the same size and mtime
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    third = open_dataset("folder", root, split_dir=split_dir, verify_images=True)
    assert [p for p, _ in third.skipped] == [victim.relative_to(root).as_posix()]


def test_a_copied_dataset_keeps_its_fingerprint_and_its_check_results(tmp_path, monkeypatch):
    import shutil

    from embedcyto.datasets import verify as verify_mod

    root = make_fixture("folder", tmp_path / "data", per_class=3)
    split_dir = tmp_path / "cache" / "data"
    first = open_dataset("folder", root, split_dir=split_dir, verify_images=True)
    copy = tmp_path / "copy" / "data"
    shutil.copytree(root, copy)  # new inodes and times, same bytes
    calls = []
    monkeypatch.setattr(verify_mod, "image_problem", lambda *a, **k: calls.append(a) or None)
    again = open_dataset("folder", copy, split_dir=split_dir, verify_images=True)
    assert calls == [] and again.fingerprint() == first.fingerprint()


def test_check_cache_is_written_durably(tmp_path, monkeypatch):
    import embedcyto.fsio as fsio

    root = make_fixture("folder", tmp_path / "data", per_class=2)
    written = []
    real = fsio.atomic_write
    monkeypatch.setattr(fsio, "atomic_write", lambda path, *a, **k: written.append(path.name)
                        or real(path, *a, **k))
    open_dataset("folder", root, split_dir=tmp_path / "s", verify_images=True)
    assert sorted(written) == ["image_check.json", "splits.json"]


# -- hostile inputs: encodings, labels, names, splits ------------------------------------------

def _edit_csv(root, edit):
    lines = (root / "labels.csv").read_bytes().split(b"\n")
    edit(lines)
    (root / "labels.csv").write_bytes(b"\n".join(lines))


def test_a_csv_that_is_not_utf8_names_its_line_and_the_fix(tmp_path):
    root = make_fixture("csv", tmp_path / "tab", per_class=3)
    _edit_csv(root, lambda lines: lines.__setitem__(3, lines[3].replace(b"grade,", b"gr\xe9de,")))
    with pytest.raises(DatasetError, match=r"labels.csv, line 4: byte 0xe9 is not UTF-8.*UTF-8"):
        open_dataset("csv", root)


def test_a_hicervix_csv_that_is_not_utf8_is_refused_cleanly(tmp_path):
    root = make_fixture("hicervix", tmp_path / "h", per_class=1)
    data = (root / "val.csv").read_bytes()
    (root / "val.csv").write_bytes(data.replace(b"Normal", b"Norm\xff", 1))
    with pytest.raises(DatasetError, match=r"val.csv, line \d+: byte 0xff is not UTF-8"):
        open_dataset("hicervix", root)


@pytest.mark.parametrize("label, problem", [
    (b"high\x00grade", "control character"),
    (b'"high\ngrade"', "control character"),
    (b"high|grade", "'|'"),
])
def test_labels_that_stores_or_tables_cannot_carry_are_refused_with_their_line(
        tmp_path, label, problem):
    root = make_fixture("csv", tmp_path / "tab", per_class=3)
    _edit_csv(root, lambda lines: lines.__setitem__(2, lines[2].replace(b"high_grade,", label
                                                                        + b",", 1)))
    with pytest.raises(DatasetError, match=rf"labels.csv, line 3: label .* {problem}"):
        open_dataset("csv", root)


def test_an_empty_label_is_a_reported_skip_not_a_class(tmp_path):
    root = make_fixture("csv", tmp_path / "tab", per_class=3)
    _edit_csv(root, lambda lines: lines.__setitem__(2, lines[2].replace(b",high_grade,", b",,", 1)))
    ds = open_dataset("csv", root)
    assert "" not in ds.classes and len(ds.records) == 8
    (path, reason), = ds.skipped
    assert reason == "no label on line 3 of labels.csv"
    with pytest.raises(DatasetError, match="no label on line 3"):
        open_dataset("csv", root, on_bad_image="error")


def test_a_split_column_in_another_case_is_used_not_dropped(tmp_path):
    root = make_fixture("csv", tmp_path / "tab", per_class=4, presplit=True)
    _edit_csv(root, lambda lines: lines.__setitem__(0, lines[0].replace(b"split", b"Split")))
    ds = open_dataset("csv", root)
    assert ds.official_split
    _edit_csv(root, lambda lines: lines.__setitem__(1, lines[1].rsplit(b",", 1)[0] + b",dev"))
    with pytest.raises(DatasetError, match="line 2: split 'dev' is not one of train, val, test"):
        open_dataset("csv", root)


def test_bcfc_folders_beside_the_split_folders_are_not_dropped_silently(tmp_path):
    root = make_fixture("bcfc", tmp_path / "b", per_class=4, layout="presplit")
    (root / "holdout").mkdir()
    (root / "holdout" / "benign_999.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"mixes split folders .* other folders \(holdout\)"):
        open_dataset("bcfc", root)


@pytest.mark.parametrize("name", ["a|b", "a\x00b", "../up", ".hidden", "tab\tname"])
def test_unsafe_dataset_names_are_refused_before_anything_is_written(tmp_path, name):
    root = make_fixture("folder", tmp_path / "data", per_class=2)
    with pytest.raises(DatasetError, match="dataset name .*`name=`"):
        open_dataset("folder", root, name=name, split_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_a_root_folder_name_with_a_pipe_is_refused_with_the_fix(tmp_path):
    root = make_fixture("folder", tmp_path / "my|data", per_class=2)
    with pytest.raises(DatasetError, match=r"'my\|data' \(the name of its root folder.*`name=`"):
        open_dataset("folder", root)
    assert open_dataset("folder", root, name="my_data").name == "my_data"


def test_unsafe_class_folder_and_model_names_are_refused(tmp_path):
    from embedcyto.errors import StoreError
    from embedcyto.store import store_path

    root = make_fixture("folder", tmp_path / "data", per_class=2)
    (root / "negative").rename(root / "neg|ative")
    with pytest.raises(DatasetError, match=r"class name 'neg\|ative' contains '\|'"):
        open_dataset("folder", root)
    with pytest.raises(StoreError, match=r"model name 'a\|b' contains '\|'"):
        store_path(tmp_path, "data", "a|b")
    with pytest.raises(StoreError, match="model name 'x\\\\x00' contains the control"):
        store_path(tmp_path, "data", "x\x00")


# -- through `embedcyto extract`: the advice given works, a replaced image is never reused -----

def _extract(root, store, *extra):
    from click.testing import CliRunner

    from embedcyto.cli.main import cli

    return CliRunner().invoke(cli, ["extract", "--model", "tiny-vit", "--dataset", "data",
                                    "--layout", "folder",
                                    "--root", str(root), "--store", str(store), "--quiet",
                                    "--workers", "0", "--precision", "fp32", "--device", "cpu",
                                    "--batch-size", "4", *extra])


@pytest.mark.slow
def test_the_advice_after_a_bad_image_in_error_mode_works(tmp_path):
    root = make_fixture("folder", tmp_path / "data", per_class=4)
    victim = sorted((root / "negative").glob("*.png"))[-1]
    victim.write_bytes(victim.read_bytes()[:60])
    failed = _extract(root, tmp_path / "cache", "--on-bad-image", "error")
    assert failed.exit_code == 1 and "Traceback" not in failed.output
    assert "--on-bad-image skip" in failed.output and "and --force" in failed.output
    without_force = _extract(root, tmp_path / "cache")
    assert without_force.exit_code == 1 and "--force" in without_force.output
    advised = _extract(root, tmp_path / "cache", "--on-bad-image", "skip", "--force")
    assert advised.exit_code == 0, advised.output
    assert "11 rows" in advised.output


@pytest.mark.slow
def test_an_image_replaced_in_place_is_not_a_cache_hit_and_force_rebuilds(tmp_path):
    root = make_fixture("folder", tmp_path / "data", per_class=4, image_size=48)
    store = tmp_path / "cache"
    assert _extract(root, store).exit_code == 0
    files = sorted((root / "negative").glob("*.png"), key=lambda p: p.stat().st_size)
    victim, st = files[-1], files[-1].stat()
    victim.write_bytes(_same_size_other_image(victim, files[0]))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    stale = _extract(root, store)
    assert stale.exit_code == 1 and "cache hit" not in stale.output
    assert "dataset_fingerprint" in stale.output and "--force" in stale.output
    rebuilt = _extract(root, store, "--force")
    assert rebuilt.exit_code == 0 and "12 computed" in rebuilt.output, rebuilt.output


@pytest.mark.parametrize("name, file_name, fine", [
    ("sipakmed", True, True), ("ASC-US", False, True), ("Superficial-Intermediate", False, True),
    ("NL (4)", False, True), ("a/b", False, True), ("a/b", True, False), (".x", True, False),
    ("", False, False), ("   ", False, False), ("a|b", False, False), ("a\x00", False, False),
    ("a\u2028b", False, False), ("naïve", True, True), (3, False, False),
])
def test_one_name_check_for_every_kind_of_name(name, file_name, fine):
    from embedcyto.names import name_problem

    assert (name_problem(name, file_name=file_name) is None) is fine
