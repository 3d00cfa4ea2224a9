"""The study's figures as PNG files: accuracy vs shots (Experiment 2) and vs data fraction
(Experiment 3).

matplotlib is imported inside the functions and drawn through its object API on an Agg canvas
(no pyplot, no global state, no display needed). Each PNG carries its title and legend entries
in its text metadata (``Title``, ``Description``: one legend entry per line), so a reader - or a
test - can tell what it shows without looking at pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from embedcyto.report.aggregate import LEVEL_LABELS, LORA, Curve, Reference

_LORA_STYLE = ("-", "o")


def _style(method: str) -> tuple[str, str]:
    """(linestyle, marker) of a method's lines: LoRA's, or its probe registry row's."""
    from embedcyto.errors import ProbeError
    from embedcyto.probes import registry

    if method == LORA:
        return _LORA_STYLE
    try:
        spec = registry.get_method(method)
    except ProbeError:
        return _LORA_STYLE
    return spec.linestyle, spec.marker


_BAND_ALPHA = 0.15


@dataclass(frozen=True)
class FigureSummary:
    """What a written figure shows: its file, labels and legend entries (one per line)."""

    path: Path
    title: str
    xlabel: str
    ylabel: str
    legend: tuple[str, ...]
    panels: int


def _new_figure(width: float, height: float, panels: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    return figure, list(axes)


def _colours(models: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    return {m: palette[i % len(palette)] for i, m in enumerate(dict.fromkeys(models))}


def _draw_curve(ax, curve: Curve, colour, dashes: str = "-", marker: str = "o") -> None:
    x = list(curve.x)
    mean = [100 * v for v in curve.mean]
    std = [100 * v for v in curve.std]
    ax.plot(x, mean, linestyle=dashes, marker=marker, color=colour, label=curve.label)
    if any(std):
        ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=colour, alpha=_BAND_ALPHA, linewidth=0)


def _save(figure, path: Path, title: str, legend: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, metadata={"Title": title, "Description": "\n".join(legend),
                                            "Software": "embedcyto report"})


def plot_shot_curves(curves: Sequence[Curve], references: Sequence[Reference], title: str,
                     path, ylabel: str = "accuracy (%)") -> FigureSummary:
    """Accuracy vs shots per class: one line per (model, method) with a ± std band over seeds,
    and each model's full-data linear probe as a dotted horizontal line of the same colour."""
    figure, (ax,) = _new_figure(9.0, 4.8)
    colours = _colours([c.model for c in curves] + [r.model for r in references])
    for curve in curves:
        dashes, marker = _style(curve.method)
        _draw_curve(ax, curve, colours[curve.model], dashes, marker)
    for ref in references:
        ax.axhline(100 * ref.value, color=colours[ref.model], linestyle=":", linewidth=1.5,
                   label=ref.label)
    shots = sorted({x for c in curves for x in c.x})
    if shots:
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [f"{s:g}" for s in shots])
    xlabel = "shots per class (training images per class)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0)
    _save(figure, Path(path), title, labels)
    return FigureSummary(Path(path), title, xlabel, ylabel, tuple(labels), 1)


def plot_fraction_curves(curves_by_level: Mapping[str, Sequence[Curve]],
                         reference: Mapping[str, float] | None, title: str, path,
                         reference_name: str = "HierSwin (published)") -> FigureSummary:
    """Accuracy vs percentage of the training data, one panel per level, one line per model, and
    the reference (percent, as published) as a dashed black line in each panel."""
    levels = list(curves_by_level)
    figure, axes = _new_figure(3.6 * max(len(levels), 1), 4.2, max(len(levels), 1))
    colours = _colours([c.model for cs in curves_by_level.values() for c in cs])
    legend: list[str] = []
    xlabel, ylabel = "training data used (%)", "accuracy (%)"
    for ax, level in zip(axes, levels):
        for curve in curves_by_level[level]:
            _draw_curve(ax, curve, colours[curve.model])
        if reference and level in reference:
            ax.axhline(reference[level], color="black", linestyle="--", linewidth=1.2,
                       label=reference_name)
        ax.set_title(LEVEL_LABELS.get(level, level))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles and not legend:
            ax.legend(fontsize="small", loc="best")
            legend = labels
    figure.suptitle(title)
    _save(figure, Path(path), title, legend)
    return FigureSummary(Path(path), title, xlabel, ylabel, tuple(legend), len(levels))
