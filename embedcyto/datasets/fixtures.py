"""Tiny copies of the real dataset layouts, with generated images that carry a class signal.

The real datasets cannot be shipped, so tests, demos and users trying embedcyto out get exact
copies of their folder layouts and file names with procedurally drawn cells
(:mod:`embedcyto.datasets._draw`). Everything is deterministic for a seed. Every fixture root
gets the generated-data marker (:mod:`embedcyto.datasets.generated`), so what is computed on it
is flagged as such up to the report.

``image_size``: None (default) draws 64 px images for speed; an int draws square images of that
size; ``"real"`` uses each dataset's real sizes (SIPaKMeD crops 100-250 px BMP, MLCC
2048x1536 JPEG, BCFC 256x192 PNG, HiCervix 150-250 px JPEG).
"""

from __future__ import annotations

import csv
import inspect
from pathlib import Path

import numpy as np
from PIL import Image

from embedcyto.datasets import bcfc, mlcc, sipakmed
from embedcyto.datasets._draw import draw_cell, draw_cluster
from embedcyto.datasets.generated import write_marker
from embedcyto.datasets.hicervix_labels import CLASSES as HICERVIX_CLASSES
from embedcyto.datasets.hicervix_labels import COLUMNS as HICERVIX_COLUMNS
from embedcyto.datasets.hicervix_labels import bundled_csv_dir
from embedcyto.datasets.records import SPLITS
from embedcyto.errors import DatasetError

DEFAULT_SIZE = 64
_MAX_DRAWN = 512
GENERIC_CLASSES = ("high_grade", "low_grade", "negative")
_MLCC_PREFIX = {"HSIL": "HSIL_", "LSIL": "LSIL_", "NILM": "NL_", "SCC": "SCC_"}
_REAL = {  # (min side, max side) or fixed (width, height)
    "sipakmed": (100, 250), "hicervix": (150, 250), "mlcc": (2048, 1536), "bcfc": (256, 192),
}


class _Painter:
    """Draws and saves images: one generator per image so each is independent of the others."""

    def __init__(self, adapter: str, image_size, seed: int):
        if image_size not in (None, "real") and (not isinstance(image_size, int)
                                                 or image_size < 8):
            raise DatasetError(f"image_size must be None, 'real' or an int >= 8, not "
                               f"{image_size!r}")
        self.adapter, self.image_size, self.seed = adapter, image_size, seed

    def size(self, rng: np.random.Generator) -> tuple[int, int]:
        """(width, height) of the next image."""
        if self.image_size is None:
            return DEFAULT_SIZE, DEFAULT_SIZE
        if isinstance(self.image_size, int):
            return self.image_size, self.image_size
        low, high = _REAL.get(self.adapter, (96, 96))
        if self.adapter in ("mlcc", "bcfc") or low == high:
            return low, high
        return int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))

    def save(self, path: Path, class_index: int, key: tuple[int, ...], cluster: bool = False):
        rng = np.random.default_rng([self.seed, class_index, *key])
        width, height = self.size(rng)
        scale = min(1.0, _MAX_DRAWN / max(width, height))
        drawn = (max(int(height * scale), 1), max(int(width * scale), 1))
        pixels = (draw_cluster if cluster else draw_cell)(rng, class_index, *drawn)
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels, mode="RGB")
        if scale < 1.0:  # large images (MLCC's 2048x1536) are drawn small and upsampled
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        if path.suffix.lower() in (".jpg", ".jpeg"):
            image.save(path, quality=90)
        else:
            image.save(path)


def _split_counts(n: int) -> dict[str, int]:
    """Per-class counts of a pre-split fixture: every split non-empty once n >= 3."""
    test = max(1, round(0.2 * n)) if n >= 3 else 0
    val = max(1, round(0.1 * n)) if n >= 3 else 0
    return {"train": n - val - test, "val": val, "test": test}


def _sipakmed(dest: Path, painter: _Painter, per_class: int, nested: bool = False) -> None:
    for label, cls in enumerate(sipakmed.CLASSES):
        folder = dest / f"im_{cls}"
        if nested:
            folder = folder / f"im_{cls}"
        done, cluster = 0, 0
        while done < per_class:
            cluster += 1
            cells = min(1 + cluster % 3, per_class - done)
            stem = f"{cluster:03d}"
            painter.save(folder / f"{stem}.bmp", label, (cluster, 0), cluster=True)
            for cell in range(1, cells + 1):
                painter.save(folder / "CROPPED" / f"{stem}_{cell:02d}.bmp", label, (cluster, cell))
                (folder / f"{stem}_cyt{cell:02d}.dat").write_text("10.0,12.0\n11.0,13.0\n")
                (folder / f"{stem}_nuc{cell:02d}.dat").write_text("5.0,6.0\n")
                (folder / "CROPPED" / f"{stem}_{cell:02d}.dat").write_text("1.0,1.0\n")
            done += cells


def _mlcc(dest: Path, painter: _Painter, per_class: int) -> None:
    for label, cls in enumerate(mlcc.CLASSES):
        for i in range(1, per_class + 1):
            batch = 1 + (i - 1) // 3
            name = f"{_MLCC_PREFIX[cls]}{batch}_ ({i}).jpg"
            painter.save(dest / mlcc.FOLDERS[cls] / name, label, (i,))


def _bcfc(dest: Path, painter: _Painter, per_class: int, layout: str = "folders") -> None:
    if layout not in ("folders", "presplit"):
        raise DatasetError(f"bcfc fixture layout must be 'folders' or 'presplit', not {layout!r}")
    for label, cls in enumerate(bcfc.CLASSES):
        if layout == "folders":
            for i in range(per_class):
                painter.save(dest / cls / f"{cls}_{i:03d}.png", label, (i,))
            continue
        i = 0
        for split, count in _split_counts(per_class).items():
            for _ in range(count):
                painter.save(dest / split / f"{cls}_{i:03d}.png", label, (i,))
                i += 1


def _generic_items(per_class: int, presplit: bool):
    for label, cls in enumerate(GENERIC_CLASSES):
        splits = [s for s, n in _split_counts(per_class).items() for _ in range(n)]
        for i in range(per_class):
            yield label, cls, i, (splits[i] if presplit else None)


def _folder(dest: Path, painter: _Painter, per_class: int, presplit: bool = False) -> None:
    for label, cls, i, split in _generic_items(per_class, presplit):
        base = dest / split if split else dest
        painter.save(base / cls / f"img_{i:03d}.png", label, (i,))


def _csv(dest: Path, painter: _Painter, per_class: int, presplit: bool = False) -> None:
    rows = []
    for label, cls, i, split in _generic_items(per_class, presplit):
        rel = f"images/{cls} {i:03d}.png"
        painter.save(dest / rel, label, (i,))
        rows.append({"path": rel, "label": cls, "group": f"{cls}-{i // 2}",
                     **({"split": split} if presplit else {})})
    with (dest / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _hicervix(dest: Path, painter: _Painter, per_class: int, csv_dir=None) -> None:
    source = Path(csv_dir) if csv_dir is not None else bundled_csv_dir()
    for split in SPLITS:
        with (source / f"{split}.csv").open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
        rng = np.random.default_rng([painter.seed, SPLITS.index(split)])
        chosen = []
        for cls in HICERVIX_CLASSES:
            idx = [i for i, row in enumerate(rows) if row["class_name"] == cls]
            take = min(per_class, len(idx))
            chosen.extend(rng.choice(idx, size=take, replace=False).tolist() if take else [])
        with (dest / f"{split}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(HICERVIX_COLUMNS))
            writer.writeheader()
            for i in sorted(chosen):
                row = {c: rows[i][c] for c in HICERVIX_COLUMNS}
                writer.writerow(row)
                label = HICERVIX_CLASSES.index(row["class_name"])
                painter.save(dest / split / row["image_name"], label, (SPLITS.index(split), i))


_WRITERS = {"sipakmed": _sipakmed, "mlcc": _mlcc, "bcfc": _bcfc, "hicervix": _hicervix,
            "folder": _folder, "csv": _csv}


def make_fixture(adapter: str, dest, *, per_class: int = 4, image_size=None, seed: int = 0,
                 **options) -> Path:
    """Write a tiny dataset in the exact layout ``adapter`` reads; return its root.

    Args:
        adapter: sipakmed, mlcc, bcfc, hicervix, folder or csv.
        dest: the root folder to write (created; existing files of the same name are replaced).
        per_class: images per class (HiCervix: rows per class per split, drawn from the real
            CSVs, fewer where a split has fewer).
        image_size: None (64 px), an int (square size) or "real" (see module docstring).
        seed: makes the images (and HiCervix's row choice) reproducible.
        **options: sipakmed ``nested=True`` doubles the class folders (``im_X/im_X/``); bcfc
            ``layout="presplit"`` writes ``train/ val/ test/`` with ``benign_*`` names; folder
            and csv ``presplit=True`` add split folders or a split column; hicervix ``csv_dir``.

    The root also gets ``embedcyto-generated.json`` (see :mod:`embedcyto.datasets.generated`).

    Raises:
        DatasetError: unknown adapter, bad image_size or options.
    """
    if adapter not in _WRITERS:
        raise DatasetError(f"no fixture for adapter {adapter!r}; choose one of "
                           f"{', '.join(_WRITERS)}")
    if not isinstance(per_class, int) or per_class < 1:
        raise DatasetError(f"per_class must be a positive int, not {per_class!r}")
    writer = _WRITERS[adapter]
    accepted = list(inspect.signature(writer).parameters)[3:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(f"the {adapter} fixture has no option {', '.join(unknown)}; its "
                           f"options are {', '.join(accepted) or '(none)'}")
    painter = _Painter(adapter, image_size, seed)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    writer(dest, painter, per_class, **options)
    write_marker(dest, adapter=adapter, per_class=per_class, image_size=image_size, seed=seed,
                 options={k: str(v) for k, v in options.items()})
    return dest
