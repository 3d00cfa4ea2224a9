"""A dataset's health report: counts per class and split, skipped images, non-fatal problems.

Fatal problems (missing root, unknown layout, malformed labels, a disagreeing split file) are
raised by :func:`embedcyto.datasets.open_dataset`; what reaches the report is usable but worth
knowing (images left out, a class absent from a split, an empty split).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from embedcyto.datasets.api import open_dataset
from embedcyto.datasets.records import SPLITS, Dataset
from embedcyto.datasets.splits import SPLIT_FILE


@dataclass(frozen=True)
class DatasetReport:
    """What ``embedcyto datasets check`` prints.

    Attributes:
        counts: class name -> split -> number of images.
        level_counts: level name -> split -> number of images labelled at that level.
        skipped: (path, reason) of images left out.
        problems: non-fatal findings, one sentence each.
        split_source: "official", a split file path, or "generated (not saved)".
        images_opened: whether every image was decoded (False: only the layout was read, so
            unreadable images are not found).
    """

    name: str
    adapter: str
    root: str
    classes: tuple[str, ...]
    counts: dict[str, dict[str, int]]
    level_counts: dict[str, dict[str, int]]
    skipped: tuple[tuple[str, str], ...]
    problems: tuple[str, ...]
    split_source: str
    images_opened: bool = True

    @property
    def total(self) -> int:
        return sum(sum(per.values()) for per in self.counts.values())

    def lines(self, max_skipped: int = 20) -> list[str]:
        """The report as text lines (a table of counts, then levels, skips and problems)."""
        width = max([len(c) for c in self.classes] + [5])
        out = [f"dataset {self.name} (adapter {self.adapter}) at {self.root}",
               f"splits: {self.split_source}", ""]
        out.append(f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in SPLITS)
                   + f"  {'total':>6}")
        for cls in self.classes:
            row = self.counts[cls]
            out.append(f"{cls:<{width}}  " + "  ".join(f"{row[s]:>6}" for s in SPLITS)
                       + f"  {sum(row.values()):>6}")
        totals = {s: sum(self.counts[c][s] for c in self.classes) for s in SPLITS}
        out.append(f"{'total':<{width}}  " + "  ".join(f"{totals[s]:>6}" for s in SPLITS)
                   + f"  {self.total:>6}")
        for level, per in self.level_counts.items():
            out.append(f"{level}: " + ", ".join(f"{s} {per[s]}" for s in SPLITS))
        if self.skipped:
            out.append(f"skipped {len(self.skipped)} image(s):")
            out.extend(f"  {p}: {r}" for p, r in self.skipped[:max_skipped])
            if len(self.skipped) > max_skipped:
                out.append(f"  ... and {len(self.skipped) - max_skipped} more")
        out.extend(f"problem: {p}" for p in self.problems)
        if not self.images_opened:
            out.append("images: not opened (`verify_images=False`), so corrupt or truncated "
                       "images are not found by this check")
        if not self.problems and not self.skipped:
            out.append("no problems found" if self.images_opened else
                       "no layout problems found; the images themselves were not checked")
        return out


def summarize(dataset: Dataset, split_source: str = "", images_opened: bool = True
              ) -> DatasetReport:
    """Count a dataset's records per class, split and level, and list what looks wrong."""
    counts = {c: {s: 0 for s in SPLITS} for c in dataset.classes}
    for rec in dataset.records:
        counts[dataset.classes[rec.label]][rec.split] += 1
    level_counts = {}
    for i, level in enumerate(dataset.level_names):
        per = {s: 0 for s in SPLITS}
        for rec in dataset.records:
            if rec.levels is not None and rec.levels[i] >= 0:
                per[rec.split] += 1
        level_counts[level] = per
    problems = []
    for split in SPLITS:
        if not any(counts[c][split] for c in dataset.classes):
            problems.append(f"the {split} split is empty")
            continue
        absent = [c for c in dataset.classes if counts[c][split] == 0]
        if absent:
            problems.append(f"no {split} images for class(es) {', '.join(absent)}")
    if dataset.skipped:
        problems.append(f"{len(dataset.skipped)} image(s) were left out (listed above)")
    return DatasetReport(
        name=dataset.name, adapter=dataset.adapter, root=str(dataset.root),
        classes=tuple(dataset.classes), counts=counts, level_counts=level_counts,
        skipped=tuple(dataset.skipped), problems=tuple(problems),
        split_source=split_source or ("official" if dataset.official_split else "generated"),
        images_opened=images_opened)


def check_dataset(adapter: str, root, *, split_dir=None, verify_images: bool = True,
                  **open_kwargs) -> DatasetReport:
    """Open a dataset as :func:`open_dataset` would and report on it.

    Every image is decoded by default (in parallel, and remembered in ``split_dir`` so a second
    check only decodes new or changed files), so the report lists the images extraction would
    leave out. ``verify_images=False`` reads only the layout and the report says so.

    Raises:
        DatasetError: whatever makes the dataset unusable (see :func:`open_dataset`).
    """
    dataset = open_dataset(adapter, root, split_dir=split_dir, verify_images=verify_images,
                           **open_kwargs)
    if dataset.official_split:
        source = "official (from the dataset's own layout or label files)"
    elif split_dir is not None:
        source = f"seeded, stratified, saved in {Path(split_dir) / SPLIT_FILE}"
    else:
        source = "seeded, stratified, not saved (pass a split folder to keep it)"
    return summarize(dataset, source, images_opened=verify_images)
