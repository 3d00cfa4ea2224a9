"""A fitted probe kept on disk for ``embedcyto predict``: arrays and JSON, never a pickle.

``embedcyto probe --save-model DIR`` refits each full-data probe on the store's training split
(its hyper-parameter chosen on the validation split, exactly as the probe row was computed),
fits a temperature on the validation split, and writes ``DIR/<dataset>/<model>/<method>/``:

* ``probe.json``: format, method, the estimator's parameters and its scalar learned state,
  class names, the temperature, the store's identity, and the *feature signature* (model name,
  weights hash, preprocessing, image decoding) taken from the store's provenance;
* ``probe.npz``: the learned arrays (e.g. ``coef_``, ``intercept_``, ``mean_``, ``scale_`` of
  the linear probe; the training bank of the kNN probe), read with ``allow_pickle=False``.

Loading rebuilds the estimator class from its name and sets the saved state, so predictions are
computed by the very code that computed the probe row. Features from another backbone, other
weights, other preprocessing or decoding are refused (:meth:`SavedProbe.check_features`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedcyto.errors import EmbedcytoError

FORMAT = "embedcyto-probe/1"
JSON_FILE, ARRAYS_FILE = "probe.json", "probe.npz"
SAVABLE = ("linear", "knn", "study_head")
ESTIMATORS = ("LinearProbe", "KNNProbe", "StudyLinearHead")
#: The provenance fields that decide what a feature vector means.
SIGNATURE_KEYS = ("model", "weights_sha256", "preprocessing", "decode", "precision")


class SavedProbeError(EmbedcytoError):
    """A saved probe is missing, unreadable, or does not match the features given to it."""


def feature_signature(provenance: Mapping[str, Any]) -> dict[str, Any]:
    """What features must share with the probe's training features to be comparable."""
    return {k: provenance.get(k) for k in SIGNATURE_KEYS}


@dataclass
class SavedProbe:
    """A probe loaded from disk: estimator, classes, temperature and feature signature."""

    estimator: Any
    method: str
    classes: tuple[str, ...]
    temperature: float | None
    signature: dict[str, Any]
    info: dict[str, Any]

    def check_features(self, provenance: Mapping[str, Any]) -> None:
        """Refuse features whose backbone, weights, preprocessing, decoding or precision differ."""
        other = feature_signature(provenance)
        differ = [k for k in SIGNATURE_KEYS if other.get(k) != self.signature.get(k)]
        if differ:
            detail = "; ".join(f"{k}: probe {self.signature.get(k)!r} vs features {other.get(k)!r}"
                               for k in differ)
            raise SavedProbeError(
                f"the saved {self.method} probe was fitted on other features ({detail}); use "
                f"features of model {self.signature.get('model')!r} made the same way, or save "
                "one fitted on these features: `embedcyto probe` with `out_dir=DIR` (in "
                "Python, `fit_and_save`)")

    def predict_proba(self, X, calibrated: bool = False) -> np.ndarray:
        """Probabilities over every class of the store (temperature-scaled on request)."""
        from embedcyto.calibration import apply_temperature
        from embedcyto.probes.evaluate import _full_proba

        proba = _full_proba(self.estimator.predict_proba(np.asarray(X, dtype=np.float32)),
                            self.estimator.classes_, len(self.classes))
        if calibrated:
            if self.temperature is None:
                raise SavedProbeError("this probe has no temperature (its store had no "
                                      "validation split): predict without `calibrated=True`")
            proba = apply_temperature(proba, self.temperature)
        return proba


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _state(est) -> tuple[dict, dict]:
    """Split the learned state into arrays (npz) and plain values (JSON)."""
    arrays, plain = {}, {}
    for name, value in vars(est).items():
        if not name.endswith("_") or name.startswith("_"):
            continue
        if isinstance(value, np.ndarray):
            arrays[name] = value
        else:
            plain[name] = _jsonable(value)
    return arrays, plain


def fit_and_save(store: str | os.PathLike, method: str, out_dir: str | os.PathLike,
                 options: Mapping[str, Any] | None = None, seed: int = 1) -> Path:
    """Fit ``method`` on a store's training split and save it (see the module docstring)."""
    from embedcyto.calibration import fit_temperature
    from embedcyto.fsio import atomic_write, atomic_write_json
    from embedcyto.probes import registry
    from embedcyto.probes.checks import store_identity
    from embedcyto.probes.evaluate import _full_proba, _make_estimator, split_arrays
    from embedcyto.store import load_features

    if method not in SAVABLE:
        raise SavedProbeError(f"only full-data probes can be saved ({', '.join(SAVABLE)}), "
                              f"not {method!r}")
    spec = registry.get_method(method)
    feats = load_features(store)
    train, val = split_arrays(feats, "train"), split_arrays(feats, "val", need=False)
    est = _make_estimator(spec, seed, dict(options or {}))
    if spec.needs_validation:
        est.fit(train["X"], train["y"], val["X"], val["y"])
    else:
        est.fit(train["X"], train["y"])
    temperature = None
    if len(val["y"]):
        val_proba = _full_proba(est.predict_proba(val["X"]), est.classes_, len(feats.classes))
        temperature = fit_temperature(val_proba, val["y"])
    arrays, plain = _state(est)
    folder = Path(out_dir) / feats.dataset / feats.model / method
    folder.mkdir(parents=True, exist_ok=True)
    info = {"format": FORMAT, "method": method, "estimator": type(est).__name__,
            "params": _jsonable(est.get_params()), "state": plain,
            "classes": list(feats.classes), "temperature": temperature,
            "signature": feature_signature(feats.provenance), "dataset": feats.dataset,
            "store_identity": store_identity(feats.provenance), "store_path": str(store),
            "n_train": int(len(train["y"])), "n_val": int(len(val["y"]))}

    def write(handle):
        np.savez_compressed(handle, **arrays)

    atomic_write(folder / ARRAYS_FILE, write)
    atomic_write_json(folder / JSON_FILE, info)
    return folder


def load_probe(folder: str | os.PathLike) -> SavedProbe:
    """Rebuild a saved probe (no code is unpickled: only arrays and JSON are read)."""
    from embedcyto import probes

    folder = Path(folder)
    try:
        info = json.loads((folder / JSON_FILE).read_text(encoding="utf-8"))
        with np.load(folder / ARRAYS_FILE, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise SavedProbeError(f"{folder} does not hold a readable saved probe ({err}); save one "
                              "with `embedcyto probe` and `out_dir=DIR` (in Python, "
                              "`fit_and_save`)") from err
    if info.get("format") != FORMAT or info.get("estimator") not in ESTIMATORS:
        raise SavedProbeError(f"{folder / JSON_FILE} is not an {FORMAT} file")
    cls = getattr(probes, info["estimator"])
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in info["params"].items()}
    est = cls(**params)
    for name, value in {**info["state"], **arrays}.items():
        setattr(est, name, value)
    return SavedProbe(est, info["method"], tuple(info["classes"]), info.get("temperature"),
                      info["signature"], info)
