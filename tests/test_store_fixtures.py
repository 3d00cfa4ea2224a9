"""Tiny datasets and features shared by the store tests, plus tests of paths and provenance.

Other store test modules import the helpers with ``from test_store_fixtures import ...``; the
kill -9 test runs them in a subprocess too, so they use numpy and the store only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedcyto.datasets.records import Dataset, LabelSpace, Record
from embedcyto.errors import StoreError
from embedcyto.store import default_store_dir, open_writer, store_path
from embedcyto.store.provenance import describe_differences, differences, identity, is_informational

CLASSES = ("normal", "lsil", "hsil", "agc")
LEVEL_NAMES = ("level_1", "level_2")
LEVEL_1 = ("negative", "squamous", "glandular")
LEVEL_2 = ("normal", "lsil", "hsil")
LEVEL_MAPS = {"level_1": (0, 1, 1, 2), "level_2": (0, 1, 2, -1)}
HIERARCHY = {"normal": "negative", "lsil": "squamous", "hsil": "squamous"}
SPLIT_CYCLE = ("train", "train", "val", "test", "test")


def make_dataset(
    n: int = 23, *, levels: bool = False, root: Path | None = None, name: str = "toy"
) -> Dataset:
    """A dataset of ``n`` fake images (the files need not exist: the store never opens them)."""
    records = []
    for i in range(n):
        label = i % len(CLASSES)
        lv = tuple(LEVEL_MAPS[k][label] for k in LEVEL_NAMES) if levels else None
        records.append(
            Record(
                path=f"{CLASSES[label]}/cell_{i:04d}é.png",
                label=label,
                split=SPLIT_CYCLE[i % len(SPLIT_CYCLE)],
                group=f"cluster_{i // 3}" if i % 2 else None,
                levels=lv,
            )
        )
    kwargs = {}
    if levels:
        kwargs = {
            "label_spaces": {
                "level_1": LabelSpace("level_1", LEVEL_1),
                "level_2": LabelSpace("level_2", LEVEL_2),
            },
            "level_names": LEVEL_NAMES,
            "hierarchy": dict(HIERARCHY),
            "level_maps": dict(LEVEL_MAPS),
        }
    return Dataset(
        name=name,
        adapter="folder",
        root=root or Path("/nonexistent/toy"),
        classes=CLASSES,
        records=records,
        **kwargs,
    )


def make_features(n: int, dim: int = 8) -> np.ndarray:
    """Deterministic features: row i depends only on i, like a real backbone's output."""
    return np.stack(
        [np.random.default_rng(1000 + i).standard_normal(dim) for i in range(n)]
    ).astype(np.float32)


def provenance(**changes) -> dict:
    """A realistic provenance dict; ``changes`` override keys."""
    base = {
        "card": {"name": "toy", "family": "timm", "embed_dim": 8},
        "weights_sha256": "ab" * 32,
        "preprocessing": {"size": 224, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "precision": "fp32",
        "device": "cpu",
        "split_hash": "cd" * 32,
        "versions": {"embedcyto": "0.1.0", "torch": "2.13.0"},
        "note": None,
    }
    base.update(changes)
    return base


def write_full(
    path: Path, dataset: Dataset, *, dim: int = 8, batch: int = 5, dtype: str = "float32", **kwargs
) -> np.ndarray:
    """Write every row in batches and commit; returns the features written."""
    feats = make_features(len(dataset.records), dim)
    prov = kwargs.pop("prov", None) or provenance(card={"name": "toy", "family": "timm",
                                                         "embed_dim": dim})
    with open_writer(
        path, dataset=dataset, provenance=prov, embed_dim=dim, dtype=dtype, **kwargs
    ) as w:
        pending = w.pending_rows()
        for start in range(0, len(pending), batch):
            rows = pending[start : start + batch]
            w.write(rows, feats[rows])
        w.commit()
    return feats


def test_store_path_layout(tmp_path):
    assert store_path(tmp_path, "sipakmed", "quilt") == tmp_path / "sipakmed" / "quilt.h5"
    for bad in ("", "a/b", "..", ".hidden"):
        with pytest.raises(StoreError, match="name"):
            store_path(tmp_path, bad, "quilt")


def test_default_store_dir_reads_env_at_call_time(monkeypatch, tmp_path):
    assert default_store_dir() == Path("cache")
    monkeypatch.setenv("EMBEDCYTO_STORE", str(tmp_path / "env"))
    assert default_store_dir() == tmp_path / "env"
    assert default_store_dir(tmp_path / "opt") == tmp_path / "opt"


def test_informational_keys_never_make_a_store_stale():
    old = provenance()
    new = provenance(device="cuda", versions={"torch": "9"}, created_at="x", torch_version="9")
    assert differences(old, new) == []
    assert is_informational("timm_version") and not is_informational("weights_sha256")
    assert "device" not in identity(new)


def test_differences_name_keys_old_and_new_including_unknown_keys():
    diffs = differences(provenance(), provenance(precision="bf16", adapter_sha256="ff"))
    assert [d[0] for d in diffs] == ["precision", "adapter_sha256"]
    text = describe_differences(diffs)
    assert '"fp32" -> "bf16"' in text and "<missing> -> " in text
