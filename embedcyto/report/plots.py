"""Diagnostic figures: confusion matrices, reliability diagrams and embedding maps (PNG).

Drawn like :mod:`embedcyto.report.figures`: matplotlib's object API on an Agg canvas, title and
legend entries in the PNG's text metadata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from embedcyto.report.figures import FigureSummary, _colours, _new_figure, _save

MIN_BIN = 3


def plot_confusion(panels: Mapping[str, tuple[np.ndarray, Sequence[str]]], title: str,
                   path) -> FigureSummary:
    """One panel per entry ``name -> (counts [true, predicted], class names)``.

    Cells are coloured by the share of the true class (rows sum to 100 %) and print the count,
    so rare classes are as readable as common ones.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sizes = [max(len(names), 4) for _, names in panels.values()]
    figure = Figure(figsize=(0.42 * sum(sizes) + 2.6 * len(sizes) + 1.2,
                             0.42 * max(sizes) + 2.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = list(figure.subplots(1, len(panels), squeeze=False, width_ratios=sizes)[0])
    for ax, (name, (counts, names)) in zip(axes, panels.items()):
        counts = np.asarray(counts)
        support = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
        image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        k = len(names)
        small = 7 if k <= 10 else 6
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center",
                            fontsize=small, color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=small + 1)
        ax.set_yticks(range(k), names, fontsize=small + 1)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(name)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the true class")
    figure.suptitle(title)
    legend = tuple(panels)
    _save(figure, Path(path), title, legend)
    return FigureSummary(Path(path), title, "predicted class", "true class", legend, len(panels))


def plot_reliability(curves: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]], title: str,
                     path) -> FigureSummary:
    """Reliability diagram: accuracy vs confidence per bin, one line per (model, method).

    ``curves[panel][label]`` is :func:`embedcyto.calibration.reliability` output; panels are
    e.g. "before" and "after temperature scaling". The diagonal is perfect calibration; a line
    below it is over-confident. Marker area grows with the bin's share of the images; bins of
    fewer than :data:`MIN_BIN` images are not drawn (their accuracy is noise).
    """
    figure, axes = _new_figure(4.4 * len(curves) + 1.8, 4.2, len(curves))
    labels = sorted({label for panel in curves.values() for label in panel})
    colours = _colours(labels)
    for ax, (panel, lines) in zip(axes, curves.items()):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="calibrated")
        for label in labels:
            if label not in lines:
                continue
            bins = lines[label]
            keep = bins["count"] >= MIN_BIN
            ax.plot(bins["confidence"][keep], bins["accuracy"][keep], color=colours[label],
                    alpha=0.8, linewidth=1.2, label=label)
            ax.scatter(bins["confidence"][keep], bins["accuracy"][keep], color=colours[label],
                       s=4 + 60 * np.sqrt(bins["count"][keep] / bins["count"].sum()), zorder=3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top class)")
        ax.set_ylabel("accuracy")
        ax.set_title(panel)
        ax.grid(True, alpha=0.3)
    handles, legend = axes[0].get_legend_handles_labels()
    axes[-1].legend(handles, legend, fontsize="small", loc="upper left",
                    bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    figure.suptitle(title)
    _save(figure, Path(path), title, legend)
    return FigureSummary(Path(path), title, "confidence (top class)", "accuracy",
                         tuple(legend), len(curves))


def embedding_2d(X: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """A 2-D map of features: UMAP when the ``umap-learn`` package is installed, else PCA."""
    X = np.asarray(X, dtype=np.float64)
    try:
        import umap  # noqa: F401
    except ImportError:
        centred = X - X.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return centred @ vt[:2].T, "PCA"
    reducer = umap.UMAP(n_components=2, random_state=seed)
    return reducer.fit_transform(X), "UMAP"


def plot_embedding(points: np.ndarray, labels: np.ndarray, classes: Sequence[str], method: str,
                   title: str, path) -> FigureSummary:
    """Scatter of a store's 2-D map, one colour per class."""
    figure, (ax,) = _new_figure(7.0, 5.2)
    colours = _colours(list(classes)) if len(classes) <= 10 else None
    from matplotlib import colormaps

    many = colormaps["turbo"]
    for k, name in enumerate(classes):
        mask = labels == k
        if not mask.any():
            continue
        colour = colours[name] if colours else many(k / max(len(classes) - 1, 1))
        ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.7, color=colour, label=name,
                   linewidths=0)
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_title(title)
    handles, legend = ax.get_legend_handles_labels()
    ax.legend(fontsize="small", markerscale=2.5, loc="upper left", bbox_to_anchor=(1.02, 1.0),
              borderaxespad=0.0, ncols=1 if len(classes) <= 14 else 2)
    _save(figure, Path(path), title, legend)
    return FigureSummary(Path(path), title, f"{method} 1", f"{method} 2", tuple(legend), 1)
