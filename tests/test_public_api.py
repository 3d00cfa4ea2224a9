"""The Python API as a user sees it: real signatures, short reprs, parameter names in errors."""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest
from test_store_fixtures import make_dataset, provenance, write_full

import embedcyto
from embedcyto.errors import StaleStoreError
from embedcyto.store import load_features as store_load_features
from embedcyto.store import open_writer


def _parameters(function):
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_the_top_level_load_features_shows_its_real_signature():
    assert _parameters(embedcyto.load_features) == _parameters(store_load_features)
    assert "store_dir" in inspect.signature(embedcyto.load_features).parameters


def test_importing_embedcyto_stays_light():
    code = "import sys, embedcyto; print('h5py' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_features_repr_is_one_short_line(tmp_path):
    path = tmp_path / "toy" / "m.h5"
    write_full(path, make_dataset(23))
    features = embedcyto.load_features(path)
    text = repr(features)
    assert "\n" not in text and len(text) < 300
    assert "rows=23" in text and "classes=4" in text and "'train'" in text
    assert np.array2string(features.X[:1]) not in text


def test_library_errors_name_parameters_not_flags(tmp_path):
    path = tmp_path / "toy" / "m.h5"
    dataset = make_dataset(23)
    write_full(path, dataset)
    with pytest.raises(StaleStoreError) as err:
        open_writer(path, dataset=dataset, provenance=provenance(weights_sha256="ff" * 32),
                    embed_dim=8)
    assert "`force=True`" in str(err.value) and "--force" not in str(err.value)
