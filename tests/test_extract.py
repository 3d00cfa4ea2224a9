"""Extraction into the store: cache hits, real-kill resume, staleness, lock, bad images, weights."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from killed_extraction import kill_extraction_after

from embedcyto import extract as ex
from embedcyto.backbones import build_backbone, get_card
from embedcyto.cli.main import cli
from embedcyto.datasets import open_dataset
from embedcyto.datasets.fixtures import make_fixture
from embedcyto.errors import ImageReadError, StaleStoreError, StoreLockedError
from embedcyto.store import load_features, store_path
from embedcyto.store.lock import StoreLock
from embedcyto.store.paths import lock_path, partial_dir

FP32 = ex.ExtractConfig(batch_size=4, num_workers=0, device="cpu", precision="fp32",
                        progress=False)


@pytest.fixture()
def sipakmed(tmp_path):
    root = make_fixture("sipakmed", tmp_path / "data", per_class=4)
    store = tmp_path / "cache"
    dataset = open_dataset("sipakmed", root, split_dir=store / "sipakmed")
    return dataset, store


def _extract(dataset, store, card="tiny-vit", config=FP32, split_store=None, **kwargs):
    split_dir = (split_store or store) / dataset.name
    return ex.extract_features(dataset, card, store_dir=store, split_dir=split_dir,
                               config=config, **kwargs)


def test_extract_writes_a_complete_store_readable_with_h5py(sipakmed):
    dataset, store = sipakmed
    result = _extract(dataset, store)
    assert result.computed == result.rows == len(dataset.records) == 20
    with h5py.File(result.path, "r") as f:
        assert f["features"].shape == (20, get_card("tiny-vit").embed_dim)
        assert f.attrs["complete"]
        assert f.attrs["model"] == "tiny-vit"
        ids = [s.decode() if isinstance(s, bytes) else s for s in f["image_id"][:]]
    assert ids == [r.path for r in dataset.records]
    feats = load_features(result.path)
    assert np.isfinite(feats.X).all() and feats.X.std() > 0


def test_features_equal_the_backbone_on_the_card_transform(sipakmed):
    from embedcyto.backbones import make_transform
    from embedcyto.datasets import read_image

    dataset, store = sipakmed
    result = _extract(dataset, store)
    card = get_card("tiny-vit")
    model = build_backbone(card, random_init=True)
    transform = make_transform(card)
    images = torch.stack([transform(read_image(dataset.root / r.path, target_size=card.input_size))
                          for r in dataset.records[:5]])
    with torch.no_grad():
        expected = model(images).numpy()
    np.testing.assert_allclose(load_features(result.path).X[:5], expected, rtol=1e-5, atol=1e-5)


def test_second_run_is_a_cache_hit_without_building_the_model(sipakmed, monkeypatch):
    dataset, store = sipakmed
    _extract(dataset, store)
    before = store_path(store, "sipakmed", "tiny-vit").stat().st_mtime_ns

    def no_model(*args, **kwargs):
        raise AssertionError("a cache hit must not build the model")

    import embedcyto.backbones.loaders

    monkeypatch.setattr(embedcyto.backbones.loaders, "build_backbone", no_model)
    result = _extract(dataset, store)
    assert result.cache_hit and result.computed == 0
    assert store_path(store, "sipakmed", "tiny-vit").stat().st_mtime_ns == before


def test_other_precision_is_refused_then_rebuilt_with_force(sipakmed):
    dataset, store = sipakmed
    _extract(dataset, store)
    bf16 = ex.ExtractConfig(batch_size=4, num_workers=0, device="cpu", precision="bf16",
                            progress=False)
    with pytest.raises(StaleStoreError, match="precision") as err:
        _extract(dataset, store, config=bf16)
    assert "`force=True`" in str(err.value) and "--force" not in str(err.value)
    forced = ex.ExtractConfig(batch_size=4, num_workers=0, device="cpu", precision="bf16",
                              force=True, progress=False)
    result = _extract(dataset, store, config=forced)
    assert result.computed == 20
    assert load_features(result.path).provenance["precision"] == "bfloat16"


def test_a_second_writer_is_refused_while_the_store_is_locked(sipakmed):
    dataset, store = sipakmed
    path = store_path(store, "sipakmed", "tiny-vit")
    path.parent.mkdir(parents=True, exist_ok=True)
    with StoreLock(lock_path(path), path):
        with pytest.raises(StoreLockedError):
            _extract(dataset, store)
    assert _extract(dataset, store).computed == 20


def test_weights_from_bin_and_safetensors_give_identical_embeddings(sipakmed, tmp_path):
    from safetensors.torch import save_file

    dataset, store = sipakmed
    model = build_backbone("tiny-vit", random_init=True, seed=7)
    state = {k: v.contiguous() for k, v in model.encoder.state_dict().items()}
    torch.save(state, tmp_path / "w.bin")
    save_file(state, str(tmp_path / "w.safetensors"))
    a = _extract(dataset, tmp_path / "s1", split_store=store, weights=tmp_path / "w.bin")
    b = _extract(dataset, tmp_path / "s2", split_store=store, weights=tmp_path / "w.safetensors")
    random = _extract(dataset, tmp_path / "s3", split_store=store)
    xa, xb = load_features(a.path).X, load_features(b.path).X
    np.testing.assert_array_equal(xa, xb)
    assert not np.allclose(xa, load_features(random.path).X)
    assert load_features(a.path).provenance["weights_sha256"] != "random-init"


def test_changed_weights_make_the_store_stale(sipakmed, tmp_path):
    dataset, store = sipakmed
    model = build_backbone("tiny-vit", random_init=True, seed=1)
    torch.save(model.encoder.state_dict(), tmp_path / "w.bin")
    _extract(dataset, store, weights=tmp_path / "w.bin")
    model = build_backbone("tiny-vit", random_init=True, seed=2)
    torch.save(model.encoder.state_dict(), tmp_path / "w.bin")
    with pytest.raises(StaleStoreError, match="weights_sha256"):
        _extract(dataset, store, weights=tmp_path / "w.bin")


def test_corrupt_image_is_checked_for_left_out_and_listed(tmp_path):
    root = make_fixture("sipakmed", tmp_path / "data", per_class=4)
    victim = sorted(root.rglob("CROPPED/*.bmp"))[7]
    victim.write_bytes(victim.read_bytes()[:60])
    result = CliRunner().invoke(cli, ["extract", "--model", "tiny-vit", "--dataset", "sipakmed",
                                      "--root", str(root), "--store", str(tmp_path / "c"),
                                      "--quiet", "--workers", "0"])
    assert result.exit_code == 0, result.output
    rel = victim.relative_to(root).as_posix()
    assert rel in result.output and "left out" in result.output
    feats = load_features(store_path(tmp_path / "c", "sipakmed", "tiny-vit"))
    assert len(feats) == 19 and rel not in list(feats.ids)
    assert [rel, ] == [s[0] for s in feats.provenance["skipped_images"]]


def test_corrupt_image_in_error_mode_stops_cleanly_and_keeps_rows(tmp_path):
    root = make_fixture("sipakmed", tmp_path / "data", per_class=4)
    store = tmp_path / "cache"
    dataset = open_dataset("sipakmed", root, split_dir=store / "sipakmed", on_bad_image="error")
    victim = root / dataset.records[13].path
    victim.write_bytes(victim.read_bytes()[:60])
    with pytest.raises(ImageReadError, match="rows computed so far are kept") as err:
        _extract(dataset, store)
    assert str(victim) in str(err.value)
    done = list(partial_dir(store_path(store, "sipakmed", "tiny-vit")).glob("*.npz"))
    assert len(done) == 3  # batches of 4 before row 13
    result = CliRunner().invoke(cli, ["extract", "--model", "tiny-vit", "--dataset", "sipakmed",
                                      "--root", str(root), "--store", str(store), "--quiet",
                                      "--on-bad-image", "error", "--workers", "0",
                                      "--precision", "fp32"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "cannot read image" in result.output


@pytest.mark.slow  # an extraction process killed mid-run
def test_resume_after_kill_9_matches_an_uninterrupted_run(tmp_path):
    root = make_fixture("sipakmed", tmp_path / "data", per_class=4)
    store = tmp_path / "cache"
    partial = partial_dir(store_path(store, "sipakmed", "tiny-clip"))
    kill_extraction_after(3, partial, root=root, split_dir=store / "sipakmed", store=store)
    assert not store_path(store, "sipakmed", "tiny-clip").exists()

    dataset = open_dataset("sipakmed", root, split_dir=store / "sipakmed")
    config = ex.ExtractConfig(batch_size=2, num_workers=0, device="cpu", precision="fp32",
                              progress=False)
    resumed = ex.extract_features(dataset, "tiny-clip", store_dir=store,
                                  split_dir=store / "sipakmed", config=config)
    assert resumed.resumed >= 6 and resumed.computed == 20 - resumed.resumed
    fresh = ex.extract_features(dataset, "tiny-clip", store_dir=tmp_path / "ref",
                                split_dir=store / "sipakmed", config=config)
    a, b = load_features(resumed.path), load_features(fresh.path)
    assert list(a.ids) == list(b.ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.X, b.X)
