"""Where each model fails and whether its probabilities can be trusted, from kept predictions.

For every (dataset, model, method) with per-image predictions (full-data probe rows and LoRA
runs; the lowest seed when there are several):

* ``tables/perclass_<dataset>_<model>_<method>.csv``: per class (and per level for
  hierarchical datasets) support, precision, recall and F1;
* ``figures/confusion_<dataset>_<model>_<method>.png``: row-normalised confusion matrix with
  counts (one panel per level for hierarchical datasets);
* ``tables/calibration_<dataset>.csv`` and ``figures/reliability_<dataset>.png``: ECE (15
  bins), classwise ECE, Brier and NLL before and after temperature scaling fitted on the
  validation predictions;
* ``figures/embedding_<dataset>_<model>.png``: a 2-D map of each store the probes read.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedcyto.predictions import ROW_FIELD, Predictions, read_predictions
from embedcyto.report.aggregate import DATASET_LABELS, LEVEL_LABELS, dataset_order, model_order

CALIBRATION_COLUMNS = ("model", "method", "n", "ece", "classwise_ece", "brier", "nll",
                       "temperature", "ece_ts", "classwise_ece_ts", "brier_ts", "nll_ts")
MAX_MAP_POINTS = 5000


@dataclass(frozen=True)
class Source:
    """One (dataset, model, method)'s predictions file, and the store it came from."""

    dataset: str
    model: str
    method: str
    path: Path
    store: str | None = None


def prediction_sources(results_dir, runs_dir) -> list[Source]:
    """The lowest seed's predictions of every full-data probe and LoRA setting."""
    from embedcyto.report.records import COMPLETE, lora_run_folders

    found: dict[tuple, tuple] = {}
    for path in sorted(Path(results_dir).glob("*.jsonl")) if Path(results_dir).is_dir() else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            if not row.get(ROW_FIELD):
                continue
            key = (row["dataset"], row["model"], row["method"] + ("-custom" if row.get(
                "options") else ""))
            seed = row.get("seed") or 0
            if key not in found or seed < found[key][0]:
                found[key] = (seed, Path(results_dir) / row[ROW_FIELD], row.get("store_path"))
    for folder in lora_run_folders(runs_dir):
        file = folder / "predictions.npz"
        if (folder / COMPLETE).is_file() and file.is_file():
            key = (folder.parts[-4], folder.parts[-3], f"lora-{folder.parts[-2]}")
            seed = int(folder.name.split("-", 1)[1])
            if key not in found or seed < found[key][0]:
                found[key] = (seed, file, None)
    return [Source(*key, path, store) for key, (_, path, store) in sorted(found.items())]


def level_views(pred: Predictions) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """``name -> (true, predicted, class names)``: the fine classes, then each level."""
    from embedcyto.metrics import level_predictions

    views = {"classes": (pred.y_true, pred.y_pred, list(pred.classes))}
    names, maps = pred.meta.get("level_names") or [], pred.meta.get("level_maps") or {}
    spaces = pred.meta.get("level_classes") or {}
    if pred.levels is None or not names:
        return views
    for i, name in enumerate(names):
        rows = pred.levels[:, i] >= 0
        k = int(max(max(maps[name]), pred.levels[:, i].max())) + 1
        labels = spaces.get(name) or [f"{name}:{c}" for c in range(k)]
        views[name] = (pred.levels[rows, i], level_predictions(pred.proba[rows], maps[name], k),
                       list(labels))
    return views


def perclass_csv(pred: Predictions) -> str:
    """Per class and level: support, precision, recall, F1 (percent, three decimals)."""
    from embedcyto.metrics import per_class_scores

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("level", "class", "support", "precision", "recall", "f1"))
    for level, (y, p, names) in level_views(pred).items():
        scores = per_class_scores(y, p, len(names))
        for k, name in enumerate(names):
            cells = [("" if np.isnan(scores[m][k]) else f"{100 * scores[m][k]:.3f}")
                     for m in ("precision", "recall", "f1")]
            writer.writerow([level, name, int(scores["support"][k]), *cells])
    return buffer.getvalue()


def _confusion(pred: Predictions, src: Source, figures_dir: Path):
    from embedcyto.metrics import confusion_matrix
    from embedcyto.report.plots import plot_confusion

    views = level_views(pred)
    if len(views) > 1:
        views.pop("classes")  # the levels say it more readably
    panels = {LEVEL_LABELS.get(n, n): (confusion_matrix(y, p, len(names)), names)
              for n, (y, p, names) in views.items()}
    title = (f"{DATASET_LABELS.get(src.dataset, src.dataset)}: {src.model}, {src.method} "
             f"(n = {len(pred.ids)} test images)")
    return plot_confusion(panels, title,
                          figures_dir / f"confusion_{src.dataset}_{src.model}_{src.method}.png")


def _calibration(dataset: str, entries: list[tuple[Source, Predictions]], out: Path):
    from embedcyto.calibration import apply_temperature, calibration_summary, reliability
    from embedcyto.report.plots import plot_reliability

    rows, before, after = [], {}, {}
    for src, pred in entries:
        s = calibration_summary(pred.proba, pred.y_true, pred.val_proba, pred.val_true)
        rows.append([src.model, src.method, len(pred.ids)] +
                    [("" if s.get(c) is None else f"{s[c]:.6f}") for c in CALIBRATION_COLUMNS[3:]])
        label = f"{src.model} {src.method}"
        before[label] = reliability(pred.proba, pred.y_true)
        if "temperature" in s:
            after[label] = reliability(apply_temperature(pred.proba, s["temperature"]),
                                       pred.y_true)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows([CALIBRATION_COLUMNS] + rows)
    (out / "tables" / f"calibration_{dataset}.csv").write_text(buffer.getvalue(), "utf-8")
    panels = {"before": before}
    if after:
        panels["after temperature scaling (fitted on validation)"] = after
    label = DATASET_LABELS.get(dataset, dataset)
    figure = plot_reliability(panels, f"{label}: reliability of the predicted probabilities",
                              out / "figures" / f"reliability_{dataset}.png")
    return rows, figure


def _embedding(store: str, dataset: str, model: str, figures_dir: Path):
    from embedcyto.report.plots import embedding_2d, plot_embedding
    from embedcyto.store import load_features

    feats = load_features(store, mmap=True)
    rows = np.arange(len(feats))
    if rows.size > MAX_MAP_POINTS:
        rows = np.sort(np.random.default_rng(0).choice(rows, MAX_MAP_POINTS, replace=False))
    points, method = embedding_2d(np.asarray(feats.X[rows]))
    title = (f"{DATASET_LABELS.get(dataset, dataset)}: {model} features ({method}, "
             f"{rows.size} images)")
    return plot_embedding(points, np.asarray(feats.labels)[rows], feats.classes, method, title,
                          figures_dir / f"embedding_{dataset}_{model}.png")


def diagnostics_section(results_dir, runs_dir, out: Path, maps: bool = True):
    """Write every per-class table, confusion matrix, calibration table and figure.

    Returns ``(markdown lines, csv paths, figures, skipped)``; a predictions file or store that
    cannot be read is listed in ``skipped`` with the reason rather than stopping the report.
    """
    from embedcyto.errors import EmbedcytoError

    lines, csvs, figures, skipped = [], [], [], []
    by_dataset: dict[str, list] = {}
    for src in prediction_sources(results_dir, runs_dir):
        try:
            pred = read_predictions(src.path)
        except EmbedcytoError as err:
            skipped.append((str(src.path), str(err)))
            continue
        by_dataset.setdefault(src.dataset, []).append((src, pred))
    for dataset in dataset_order(by_dataset):
        entries = sorted(by_dataset[dataset], key=lambda e: (model_order(
            [x.model for x, _ in by_dataset[dataset]]).index(e[0].model), e[0].method))
        label = DATASET_LABELS.get(dataset, dataset)
        lines += [f"### {label}: per class and calibration", "", "| model | method | per class |",
                  "|:---|:---|:---|"]
        for src, pred in entries:
            stem = f"{dataset}_{src.model}_{src.method}"
            path = out / "tables" / f"perclass_{stem}.csv"
            path.write_text(perclass_csv(pred), encoding="utf-8")
            csvs.append(path)
            figures.append(_confusion(pred, src, out / "figures"))
            lines.append(f"| {src.model} | {src.method} | [CSV](tables/perclass_{stem}.csv), "
                         f"[confusion matrix](figures/confusion_{stem}.png) |")
        rows, figure = _calibration(dataset, entries, out)
        csvs.append(out / "tables" / f"calibration_{dataset}.csv")
        figures.append(figure)
        lines += ["", "| model | method | ECE | classwise ECE | Brier | NLL | T | ECE after T |",
                  "|:---|:---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            cells = [r[0], r[1]] + [c and f"{float(c):.3f}" for c in (r[3:8] + [r[8]])]
            lines.append("| " + " | ".join(c or "–" for c in cells) + " |")
        lines += ["", f"CSV: [calibration](tables/calibration_{dataset}.csv). ECE: 15 bins; "
                  "T: temperature fitted on the validation split.", ""]
        stores = {(src.model, src.store) for src, _ in entries if src.store}
        for model, store in sorted(stores) if maps else []:
            try:
                figures.append(_embedding(store, dataset, model, out / "figures"))
            except EmbedcytoError as err:
                skipped.append((store, f"no embedding map: {err}"))
    return lines, csvs, figures, skipped
