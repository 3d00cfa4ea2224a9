"""The study's figures as PNG files: accuracy vs shots (Experiment 2) and vs data fraction
(Experiment 3).

matplotlib is imported inside the functions and drawn through its object API on an Agg canvas
(no pyplot, no global state, no display needed). Each PNG carries its title and legend entries
in its text metadata (``Title``, ``Description``: one legend entry per line; ``Warning`` when the
numbers come from random-weight models; ``Comment`` for notes on reading it), so a reader - or a
test - can tell what it shows without looking at pixels.

Accuracy is a percentage: the ± std bands are clipped to 0-100 and so is the axis. Lines that
share their points (equal accuracies, common on small or easy data) would hide each other, so
each line's points are shifted sideways by a small step and a note under the figure says so.
"""

from __future__ import annotations

import dataclasses

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
_LOG2_STEP = 0.035      # sideways shift between lines on the log2 shots axis (x 1.025 per line)
_SPAN_STEP = 0.025      # sideways shift between lines on a linear axis, as a share of its span
SHIFT_NOTE = ("points of different lines are shifted sideways slightly so that equal values stay "
              "visible; the ticks mark the real values")


@dataclass(frozen=True)
class FigureSummary:
    """What a written figure shows: its file, labels and legend entries (one per line)."""

    path: Path
    title: str
    xlabel: str
    ylabel: str
    legend: tuple[str, ...]
    panels: int
    ylim: tuple[float, float] = (0.0, 100.0)
    warning: str | None = None
    notes: tuple[str, ...] = ()


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


def shifts(n: int, step: float) -> list[float]:
    """``n`` sideways offsets, ``step`` apart and centred on zero (pure)."""
    return [(i - (n - 1) / 2) * step for i in range(n)]


def band(mean: Sequence[float], std: Sequence[float], low: float = 0.0,
         high: float = 100.0) -> tuple[list[float], list[float]]:
    """mean ± std clipped to the metric's range (pure)."""
    return ([max(low, m - s) for m, s in zip(mean, std)],
            [min(high, m + s) for m, s in zip(mean, std)])


def _draw_curve(ax, curve: Curve, colour, dashes: str = "-", marker: str = "o",
                x=None) -> None:
    x = list(curve.x) if x is None else list(x)
    mean = [100 * v for v in curve.mean]
    std = [100 * v for v in curve.std]
    ax.plot(x, mean, linestyle=dashes, marker=marker, color=colour, label=curve.label,
            clip_on=False)
    if any(std):
        lower, upper = band(mean, std)
        ax.fill_between(x, lower, upper, color=colour, alpha=_BAND_ALPHA, linewidth=0)


def _clip_axis(ax) -> tuple[float, float]:
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), min(high, 100.0))
    return tuple(float(v) for v in ax.get_ylim())


def _annotate(figure, warning: str | None, notes: Sequence[str]) -> None:
    text = [f"WARNING: {warning}"] if warning else []
    text += list(notes)
    if text:
        figure.supxlabel("\n".join(text), fontsize="small",
                         color="firebrick" if warning else "dimgray")


def _save(figure, path: Path, title: str, legend: Sequence[str], warning: str | None = None,
          notes: Sequence[str] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"Title": title, "Description": "\n".join(legend), "Software": "embedcyto report"}
    if warning:
        metadata["Warning"] = warning
    if notes:
        metadata["Comment"] = "\n".join(notes)
    figure.savefig(path, dpi=110, metadata=metadata)


def plot_shot_curves(curves: Sequence[Curve], references: Sequence[Reference], title: str,
                     path, ylabel: str = "accuracy (%)", *,
                     warning: str | None = None) -> FigureSummary:
    """Accuracy vs shots per class: one line per (model, method) with a ± std band over seeds,
    and each model's full-data linear probe as a dotted horizontal line of the same colour.
    ``warning`` (e.g. random-weight models) is printed under the figure and in its metadata."""
    figure, (ax,) = _new_figure(9.0, 4.8)
    colours = _colours([c.model for c in curves] + [r.model for r in references])
    positive = sorted({x for c in curves for x in c.x if x > 0})
    zero_at = (positive[0] if positive else 1.0) / 2  # shots = 0 (zero-shot) on a log axis
    curves = [dataclasses.replace(c, x=tuple(zero_at if x == 0 else x for x in c.x))
              for c in curves]
    offsets = shifts(len(curves), _LOG2_STEP)
    for curve, offset in zip(curves, offsets):
        dashes, marker = _style(curve.method)
        _draw_curve(ax, curve, colours[curve.model], dashes, marker,
                    x=[v * 2 ** offset for v in curve.x])
    for ref in references:
        ax.axhline(100 * ref.value, color=colours[ref.model], linewidth=1.5, label=ref.label,
                   linestyle="-." if ref.published else ":")
    shots = sorted({x for c in curves for x in c.x})
    if shots:
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, ["0" if s == zero_at and s not in positive else f"{s:g}"
                              for s in shots])
    xlabel = "shots per class (training images per class)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0)
    ylim = _clip_axis(ax)
    notes = (SHIFT_NOTE,) if len(curves) > 1 else ()
    _annotate(figure, warning, notes)
    _save(figure, Path(path), title, labels, warning, notes)
    return FigureSummary(Path(path), title, xlabel, ylabel, tuple(labels), 1, ylim, warning,
                         notes)


def plot_fraction_curves(curves_by_level: Mapping[str, Sequence[Curve]],
                         reference: Mapping[str, float] | None, title: str, path,
                         reference_name: str = "HierSwin (published)", *,
                         warning: str | None = None) -> FigureSummary:
    """Accuracy vs percentage of the training data, one panel per level, one line per model, and
    the reference (percent, as published) as a dashed black line in each panel. ``warning`` is
    printed under the figure and in its metadata."""
    levels = list(curves_by_level)
    figure, axes = _new_figure(3.6 * max(len(levels), 1), 4.2, max(len(levels), 1))
    colours = _colours([c.model for cs in curves_by_level.values() for c in cs])
    legend: list[str] = []
    xlabel, ylabel = "training data used (%)", "accuracy (%)"
    ylim = (0.0, 100.0)
    most = max((len(cs) for cs in curves_by_level.values()), default=0)
    xs = [x for cs in curves_by_level.values() for c in cs for x in c.x]
    step = _SPAN_STEP * ((max(xs) - min(xs)) if len(set(xs)) > 1 else 10.0)
    for ax, level in zip(axes, levels):
        offsets = shifts(len(curves_by_level[level]), step)
        for curve, offset in zip(curves_by_level[level], offsets):
            _draw_curve(ax, curve, colours[curve.model], x=[v + offset for v in curve.x])
        if reference and level in reference:
            ax.axhline(reference[level], color="black", linestyle="--", linewidth=1.2,
                       label=reference_name)
        ax.set_title(LEVEL_LABELS.get(level, level))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ylim = _clip_axis(ax)
        handles, labels = ax.get_legend_handles_labels()
        if handles and not legend:
            ax.legend(fontsize="small", loc="best")
            legend = labels
    figure.suptitle(title)
    notes = (SHIFT_NOTE,) if most > 1 else ()
    _annotate(figure, warning, notes)
    _save(figure, Path(path), title, legend, warning, notes)
    return FigureSummary(Path(path), title, xlabel, ylabel, tuple(legend), len(levels), ylim,
                         warning, notes)


def stamp_warning(summary: FigureSummary, warning: str) -> FigureSummary:
    """Add ``warning`` under an already written figure (and to its metadata), for figures drawn
    by code that does not take a warning itself; a figure that has one is returned unchanged."""
    import dataclasses

    from PIL import Image, ImageDraw, ImageFont
    from PIL.PngImagePlugin import PngInfo

    if summary.warning:
        return summary
    with Image.open(summary.path) as image:
        info = {k: v for k, v in image.info.items() if isinstance(v, str)}
        base = image.convert("RGB")
    text = f"WARNING: {warning}"
    font = ImageFont.load_default()
    band_height = 24
    stamped = Image.new("RGB", (base.width, base.height + band_height), "white")
    stamped.paste(base, (0, 0))
    ImageDraw.Draw(stamped).text((8, base.height + 6), text, fill=(178, 34, 34), font=font)
    meta = PngInfo()
    for key, value in {**info, "Warning": warning}.items():
        meta.add_text(key, value)
    stamped.save(summary.path, pnginfo=meta)
    return dataclasses.replace(summary, warning=warning)
