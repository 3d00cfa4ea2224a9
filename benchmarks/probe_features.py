"""Synthetic embeddings of the four probe datasets, hard enough to need realistic solver effort.

Used by ``bench_probe.py``. Sizes, labels, splits and (for HiCervix) the three levels are the real
ones; ``scale`` subsamples (< 1) or repeats (> 1, for the scaling runs) the rows. Features are
float32 (as stores hold them), 1,024-d by default, built so that a linear probe behaves as on
real foundation-model embeddings rather than on separable blobs:

* **class overlap**: class means about ``separation`` noise units apart. At the default 3.2 the
  linear probe's test accuracy on full-size HiCervix is 0.864 at the chosen C = 1, and
  scikit-learn's C path needs about 2,800 L-BFGS iterations (realistic counts); at 6 the set
  is nearly separable (0.989, C = 100 chosen);
* **sub-modes**: each class is a mixture of three sub-populations (cell subtypes, staining);
* **a decaying noise spectrum**: noise variance falls as ``i^(-1.4)`` over the ``i``-th axis of a
  random basis (embeddings concentrate their variance in a few directions), which makes the
  logistic-regression problem ill-conditioned, as it is on real features;
* **per-class noise scales** (0.6 to 1.5): some classes are tight, some diffuse;
* a low-rank nuisance and a common offset, as CLIP-style embeddings have.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

SIZES = {"sipakmed": (4049, (813, 825, 793, 787, 831)), "mlcc": (963, (613, 163, 113, 74)),
         "bcfc": (693, (160, 533))}
DATASETS = ("hicervix", "sipakmed", "mlcc", "bcfc")
#: Default class-mean separation: realistic overlap (HiCervix linear probe ≈ 0.86 test accuracy).
SEPARATION = 3.2


def _hicervix_rows(scale: float):
    """Labels, splits and levels of the real HiCervix CSVs (bundled), subsampled or repeated."""
    from embedcyto.datasets.hicervix_labels import read_hicervix_labels

    ds = read_hicervix_labels()
    keep = ds.records
    if scale < 1:  # per (class, split): a share of the rows, but enough for 16 shots
        cells: dict = {}
        for r in ds.records:
            cells.setdefault((r.label, r.split), []).append(r)
        keep = [r for rows in cells.values()
                for r in rows[: max(int(scale * len(rows)), min(len(rows), 20))]]
    repeat = max(1, int(round(scale)))
    labels = np.tile(np.array([r.label for r in keep]), repeat)
    splits = np.tile(np.array([r.split for r in keep]), repeat)
    levels = np.tile(np.array([r.levels for r in keep]), (repeat, 1))
    meta = {"classes": ds.classes, "level_names": ds.level_names,
            "level_maps": {k: tuple(v) for k, v in ds.level_maps.items()},
            "label_spaces": {k: v.classes for k, v in ds.label_spaces.items()}}
    return labels, splits, levels, meta


def _stratified_split(labels, rng):
    splits = np.empty(labels.size, dtype=object)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_tr, n_va = int(round(0.7 * rows.size)), int(round(0.1 * rows.size))
        splits[rows[:n_tr]], splits[rows[n_tr:n_tr + n_va]], splits[rows[n_tr + n_va:]] = \
            "train", "val", "test"
    return splits.astype(str)


def _labels(name: str, scale: float, rng):
    if name == "hicervix":
        return _hicervix_rows(scale)
    counts = [max(int(c * scale), 25) for c in SIZES[name][1]]
    labels = np.repeat(np.arange(len(counts)), counts)
    meta = {"classes": tuple(f"class_{i}" for i in range(len(counts))), "level_names": (),
            "level_maps": {}, "label_spaces": {}}
    return labels, _stratified_split(labels, rng), None, meta


def make_features(name: str, dim: int = 1024, scale: float = 1.0, seed: int = 0,
                  separation: float = SEPARATION, modes: int = 3, decay: float = 0.7):
    """A ``Features``-like object (what the probe runner passes around) of one dataset."""
    rng = np.random.default_rng(seed)
    labels, splits, levels, meta = _labels(name, scale, rng)
    k, n = len(meta["classes"]), labels.size
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    spectrum = np.arange(1, dim + 1) ** -decay
    spectrum *= np.sqrt(dim / np.sum(spectrum ** 2))  # total variance = dim, as white noise
    mix = (spectrum[:, None] * basis.T).astype(np.float32)  # rows of z @ mix: the noise
    unit = separation / np.sqrt(dim)
    means = (rng.normal(size=(k, dim)).astype(np.float32) @ mix) * unit
    sub = (rng.normal(size=(k * modes, dim)).astype(np.float32) @ mix) * (0.8 * unit)
    spread = rng.uniform(0.6, 1.5, size=k).astype(np.float32)
    mode = rng.integers(modes, size=n)
    X = rng.normal(size=(n, dim)).astype(np.float32) @ mix
    X *= spread[labels, None]
    X += means[labels] + sub[labels * modes + mode]
    X += rng.normal(size=(n, 16)).astype(np.float32) @ (
        rng.normal(size=(16, dim)).astype(np.float32) * 0.5)
    X += rng.normal(size=dim).astype(np.float32) * 2.0
    ids = np.array([f"{name}/{i:07d}.png" for i in range(n)])
    return SimpleNamespace(X=np.ascontiguousarray(X, dtype=np.float32), labels=labels, ids=ids,
                           splits=splits, levels=levels, groups=np.full(n, ""), hierarchy={},
                           provenance={}, **meta)
