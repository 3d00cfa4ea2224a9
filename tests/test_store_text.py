"""Class text embeddings cached in a store: own group, provenance, stale when prompts change."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from embedcyto.store import load_features
from embedcyto.store.reader import verify_store
from embedcyto.store.text import TextEmbeddings, read_text_embeddings, write_text_embeddings
from embedcyto.textembed import ensure_text_embeddings
from test_store_fixtures import make_dataset, provenance, write_full


def _store(tmp_path, dim=32, **prov):
    path = tmp_path / "toy" / "tiny-clip.h5"
    path.parent.mkdir(parents=True)
    prov = provenance(model="tiny-clip", adapter="folder", weights_sha256=None,
                      card={"name": "tiny-clip", "family": "open_clip", "embed_dim": dim}, **prov)
    feats = write_full(path, make_dataset(levels=True), dim=dim, prov=prov)
    return path, feats


def _entry(n=4, dim=32, space="classes", **kw):
    rng = np.random.default_rng(0)
    base = dict(space=space, embeddings=rng.standard_normal((n, dim)).astype(np.float32),
                per_template=rng.standard_normal((n, 2, dim)).astype(np.float32),
                classes=tuple("abcd"[:n]), phrases=tuple("ABCD"[:n]),
                templates=("x {}.", "{}"), prompts_source="test", prompts_sha256="p",
                tokenizer="tok", weights_sha256="random-init", logit_scale=100.0, model="tiny-clip")
    return TextEmbeddings(**{**base, **kw})


def test_written_group_is_plain_hdf5_and_leaves_the_features_alone(tmp_path):
    path, feats = _store(tmp_path)
    entry = _entry()
    write_text_embeddings(path, [entry])
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["text/classes/embeddings"][()], entry.embeddings)
        assert json.loads(f["text/classes"].attrs["templates"]) == ["x {}.", "{}"]
        assert f["text/classes"].attrs["tokenizer"] == "tok"
    again = load_features(path)
    np.testing.assert_array_equal(again.X, feats)
    assert verify_store(path).verified  # the integrity record still holds
    got = read_text_embeddings(path)
    assert got.matches(entry) and got.logit_scale == 100.0
    # replacing a group keeps one copy
    write_text_embeddings(path, [_entry(phrases=("q", "r", "s", "t"))])
    assert read_text_embeddings(path).phrases == ("q", "r", "s", "t")
    assert not read_text_embeddings(path).matches(entry)
    assert read_text_embeddings(path, "level_1") is None


def test_bad_shapes_are_refused_before_writing(tmp_path):
    path, _ = _store(tmp_path)
    before = path.read_bytes()
    with pytest.raises(Exception, match="do not fit 4 classes"):
        write_text_embeddings(path, [_entry(embeddings=np.zeros((3, 32), np.float32))])
    assert path.read_bytes() == before


def test_computed_once_then_cached_and_recomputed_when_prompts_change(tmp_path, monkeypatch):
    path, _ = _store(tmp_path)
    feats = load_features(path)
    first = ensure_text_embeddings(feats)
    assert set(first) == {"classes", "level_1", "level_2"}
    assert first["classes"].embeddings.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(first["classes"].embeddings, axis=1), 1, atol=1e-5)
    assert first["classes"].tokenizer.startswith("open_clip")

    import embedcyto.textembed as te

    def boom(*a, **k):
        raise AssertionError("the text tower must not be rebuilt for a cached entry")

    monkeypatch.setattr(te, "_tower", boom)
    cached = ensure_text_embeddings(load_features(path))
    np.testing.assert_array_equal(cached["classes"].embeddings, first["classes"].embeddings)

    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"classes": {"lsil": "low-grade lesion"}}))
    with pytest.raises(AssertionError, match="must not be rebuilt"):
        ensure_text_embeddings(load_features(path), prompts_file=prompts)
    monkeypatch.undo()
    changed = ensure_text_embeddings(load_features(path), prompts_file=prompts)
    assert changed["classes"].phrases[1] == "low-grade lesion"
    assert not np.allclose(changed["classes"].embeddings[1], first["classes"].embeddings[1])
    np.testing.assert_allclose(changed["classes"].embeddings[0], first["classes"].embeddings[0],
                               atol=1e-6)
    assert read_text_embeddings(path).phrases[1] == "low-grade lesion"


def test_image_only_model_store_is_a_clear_error(tmp_path):
    path = tmp_path / "toy" / "tiny-vit.h5"
    path.parent.mkdir(parents=True)
    write_full(path, make_dataset(), dim=8, prov=provenance(model="tiny-vit"))
    with pytest.raises(Exception, match="no text encoder"):
        ensure_text_embeddings(load_features(path))
