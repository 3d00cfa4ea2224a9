"""``embedcyto predict``: apply a saved probe or a finished LoRA run to new images.

Images come from a folder (every image file below it, recursively) or a CSV with a ``path``
column (paths relative to the CSV's folder, or absolute). Each image is first checked exactly
as extraction checks it (:func:`embedcyto.datasets.images.image_problem`, with the same decoding
the model was trained with); an unreadable image gets its reason in the ``error`` column and no
prediction, and every readable image gets its predicted class and one probability per class.

A saved probe needs features: the probe's backbone is rebuilt from its card with the weights it
was fitted on (checked by hash), and its features are computed with the card's preprocessing; a
probe fitted on another backbone, other weights or other preprocessing is refused
(:meth:`embedcyto.saved_probe.SavedProbe.check_features`).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedcyto.errors import EmbedcytoError


class PredictError(EmbedcytoError):
    """No images to predict, or an input that is not a folder or CSV of images."""


@dataclass
class PredictResult:
    """Per image: its path as given, the error (empty when read), and probabilities."""

    paths: list[str]
    errors: list[str]
    proba: np.ndarray  # (n_readable, k), rows in the order of the readable paths
    classes: tuple[str, ...]

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "predicted", "error"] + [f"p_{c}" for c in self.classes])
        readable = iter(self.proba)
        for path, error in zip(self.paths, self.errors):
            if error:
                writer.writerow([path, "", error] + [""] * len(self.classes))
                continue
            p = next(readable)
            writer.writerow([path, self.classes[int(np.argmax(p))], ""] +
                            [f"{v:.6f}" for v in p])
        return buffer.getvalue()


def list_inputs(source: str | os.PathLike) -> tuple[Path, list[str], list[tuple[str, str]]]:
    """(root, relative paths, skipped (path, reason)) of a folder or CSV (``path`` column).

    A folder is listed as the dataset adapters list one: entries named like images that are
    not readable files (broken links, folders named ``x.png``) are skipped with the reason.
    """
    from embedcyto.datasets._common import list_images

    source = Path(source)
    skipped: list[tuple[str, str]] = []
    if source.is_dir():
        paths = [p.relative_to(source).as_posix() for p in list_images(source, source, skipped)]
        root = source
    elif source.is_file() and source.suffix.lower() == ".csv":
        with open(source, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if "path" not in (reader.fieldnames or []):
                raise PredictError(f"{source} has no 'path' column; give one image path per "
                                   "row under a 'path' header")
            paths = [row["path"] for row in reader if row["path"].strip()]
        root = source.parent
    else:
        raise PredictError(f"{source} is neither a folder of images nor a .csv file")
    if not paths and not skipped:
        raise PredictError(f"no images found in {source}")
    return root, paths, skipped


def _inputs(source, jpeg_draft: bool, input_size: int) -> tuple[Path, list[str], list[str]]:
    """(root, paths, error per path): each image checked as extraction checks it."""
    from embedcyto.datasets.images import image_problem

    root, paths, skipped = list_inputs(source)
    errors = [image_problem(root / p, target_size=input_size if jpeg_draft else None) or ""
              for p in paths]
    return root, paths + [p for p, _ in skipped], errors + [why for _, why in skipped]


def _features(card, weights_path, root: Path, paths: list[str], device, batch_size: int,
              jpeg_draft: bool, dtype) -> np.ndarray:
    import torch

    from embedcyto.backbones import build_backbone, make_transform, resolve_device
    from embedcyto.extract import RowImages

    device = resolve_device(device)
    backbone = build_backbone(card, weights=weights_path, random_init=weights_path is None,
                              device=device, dtype=dtype)
    images = RowImages(root, paths, np.arange(len(paths)), make_transform(card),
                       card.input_size, jpeg_draft=jpeg_draft)
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False)
    out = np.zeros((len(paths), card.embed_dim), dtype=np.float32)
    with torch.no_grad():
        for rows, batch, _ in loader:
            out[rows.numpy()] = backbone(batch.to(device)).float().cpu().numpy()
    return out


def _training_dtype(precision: str | None, device):
    """The backbone precision the probe's training features were computed in.

    A bf16 feature differs from the fp32 one by about 1 % (relative L2), enough to move images
    that sit near a class boundary, so new images go through the backbone exactly as the
    training images did. Probes saved before the precision was recorded ran in fp32.

    Raises:
        PredictError: fp16 features (made on a GPU) to be reproduced on the CPU.
    """
    import torch

    from embedcyto.backbones import resolve_device
    from embedcyto.backbones.runtime import PRECISIONS

    dtype = PRECISIONS.get(precision or "float32")
    if dtype is None:
        raise PredictError(f"the probe records an unknown feature precision {precision!r}; "
                           "save it again with `embedcyto probe` and `out_dir=DIR`")
    if dtype == torch.float16 and resolve_device(device).type == "cpu":
        raise PredictError("the probe's training features were computed in float16 on a GPU, "
                           "which the CPU does not run; predict on a GPU (`device='cuda'`) so "
                           "that new features are made the same way")
    return dtype


def predict_with_probe(probe_dir, source, *, weights=None, weights_dir=None, device="auto",
                       batch_size: int = 32, calibrated: bool = False) -> PredictResult:
    """Features of every readable image through the probe's backbone, then the probe."""
    from embedcyto.backbones import get_card, preprocess_spec
    from embedcyto.backbones.weights import resolve_model_weights
    from embedcyto.saved_probe import load_probe

    probe = load_probe(probe_dir)
    card = get_card(probe.signature["model"])
    random = probe.signature.get("weights_sha256") == "random-init"
    wpath, sha = resolve_model_weights(card, weights, weights_dir, random_init=random)
    jpeg_draft = probe.signature.get("decode") == "pil-jpeg-draft"
    precision = probe.signature.get("precision")
    dtype = _training_dtype(precision, device)
    probe.check_features({"model": card.name, "weights_sha256": sha or "random-init",
                          "preprocessing": preprocess_spec(card),
                          "decode": probe.signature.get("decode"), "precision": precision})
    root, paths, errors = _inputs(source, jpeg_draft, card.input_size)
    good = [p for p, e in zip(paths, errors) if not e]
    proba = np.zeros((0, len(probe.classes)))
    if good:
        X = _features(card, wpath, root, good, device, batch_size, jpeg_draft, dtype)
        proba = probe.predict_proba(X, calibrated)
    return PredictResult(paths, errors, proba, probe.classes)


def predict_with_run(run_dir, source, *, weights=None, weights_dir=None, device="cpu",
                     batch_size: int = 32, calibrated: bool = False) -> PredictResult:
    """A finished LoRA run's model on every readable image (temperature from its validation
    predictions when ``calibrated``)."""
    from embedcyto.calibration import apply_temperature, fit_temperature
    from embedcyto.datasets.records import Dataset, Record
    from embedcyto.lora import runs
    from embedcyto.lora.model import load_classifier
    from embedcyto.lora.train import predict_proba
    from embedcyto.predictions import read_predictions

    saved = read_predictions(Path(run_dir) / runs.PREDICTIONS_FILE)
    model = load_classifier(run_dir, weights=weights, weights_dir=weights_dir, device=device)
    root, paths, errors = _inputs(source, True, model.encoder.card.input_size)
    good = [p for p, e in zip(paths, errors) if not e]
    proba = np.zeros((0, len(saved.classes)))
    if good:
        dataset = Dataset(name="predict", adapter="folder", root=root, classes=saved.classes,
                          records=[Record(path=p, label=0, split="test") for p in good])
        import torch

        proba = predict_proba(model, dataset, np.arange(len(good)),
                              device=torch.device(device), batch_size=batch_size)
    if calibrated:
        if saved.val_proba is None:
            raise PredictError(f"the run in {run_dir} kept no validation predictions, so no "
                               "temperature can be fitted: predict without `calibrated=True`")
        proba = apply_temperature(proba, fit_temperature(saved.val_proba, saved.val_true))
    return PredictResult(paths, errors, proba, saved.classes)
