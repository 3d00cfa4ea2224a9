"""``open_dataset``: read a root with an adapter, assign splits, optionally verify images."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

from embedcyto.datasets._common import short_list
from embedcyto.datasets.records import Dataset
from embedcyto.datasets.registry import KNOWN_DATASETS, get_adapter
from embedcyto.datasets.splits import DEFAULT_RATIOS, assign_splits
from embedcyto.datasets.verify import image_problems
from embedcyto.errors import DatasetError
from embedcyto.names import name_problem

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "error")


def _reader_kwargs(reader, adapter: str, name: str, on_bad_image: str, options: dict) -> dict:
    params = inspect.signature(reader).parameters
    unknown = sorted(k for k in options if k not in params or k in ("root", "name"))
    if unknown:
        accepted = [p for p in params if p not in ("root", "name", "on_bad_image")]
        raise DatasetError(f"the {adapter} adapter has no option {', '.join(unknown)}; "
                           f"its options are {', '.join(accepted) or '(none)'}")
    kwargs = dict(options, name=name)
    if "on_bad_image" in params:
        kwargs["on_bad_image"] = on_bad_image
    return kwargs


def _verify(dataset: Dataset, on_bad_image: str, target_size: int | None = None,
            cache_dir=None) -> None:
    """Decode every image (or recall the result for unchanged files); drop (and report) or
    raise on the ones that fail."""
    problems = image_problems(dataset, target_size=target_size, cache_dir=cache_dir)
    kept = []
    for rec, problem in zip(dataset.records, problems):
        if problem is None:
            kept.append(rec)
        elif on_bad_image == "error":
            raise DatasetError(f"cannot read image {dataset.root / rec.path}: {problem}; replace "
                               "or delete it, or use on_bad_image='skip' to leave it out")
        else:
            dataset.skipped.append((rec.path, problem))
    if len(kept) < len(dataset.records):
        log.warning("%s: %d unreadable image(s) left out", dataset.name,
                    len(dataset.records) - len(kept))
    dataset.records = kept
    dataset.skipped.sort()


def open_dataset(adapter: str, root, *, name: str | None = None, split_dir=None, seed: int = 0,
                 ratios=DEFAULT_RATIOS, on_bad_image: str = "skip", verify_images: bool = False,
                 verify_size: int | None = None, **options) -> Dataset:
    """Read a dataset root into records with every split assigned.

    Args:
        adapter: one of ``list_adapters()`` (sipakmed, mlcc, bcfc, hicervix, folder, csv).
        root: the dataset root folder.
        name: dataset name (store folder). Default: the adapter name for the four known
            datasets, the root folder's name for ``folder`` and ``csv``.
        split_dir: where ``splits.json`` is read from or written to (generated splits only).
        seed: seed of a generated split.
        ratios: train, val, test fractions of a generated split.
        on_bad_image: "skip" (default): images that cannot be used (unreadable with
            ``verify_images``, listed in a CSV but missing, of unknown class or cluster) are left
            out and listed in ``Dataset.skipped`` with the reason; "error": the first raises.
        verify_images: decode every image now instead of failing later at extraction. With
            ``split_dir``, results are remembered in ``image_check.json`` there and only new
            or changed files are decoded on later calls.
        verify_size: decode large JPEGs at reduced size (at least this short side) when
            verifying, as extraction does.
        **options: adapter-specific options (e.g. ``csv_dir`` for hicervix; ``csv_file``,
            ``path_column``, ``label_column``... for csv).

    Raises:
        DatasetError: unknown adapter or option, bad root or layout, bad labels, no images.
        SplitError: a saved split that disagrees with the dataset or the requested seed/ratios.
    """
    info = get_adapter(adapter)
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise DatasetError(f"on_bad_image must be 'skip' or 'error', not {on_bad_image!r}")
    given = name is not None
    if name is None:
        name = adapter if adapter in KNOWN_DATASETS else Path(root).expanduser().resolve().name
    problem = name_problem(name, file_name=True)
    if problem is not None:
        source = "" if given else f" (the name of its root folder {root})"
        raise DatasetError(f"dataset name {name!r}{source} {problem}; give the dataset a plain "
                           "name such as 'cervix_2024' (`name=`)")
    reader = info.load_reader()
    dataset = reader(root, **_reader_kwargs(reader, adapter, name, on_bad_image, options))
    if dataset.skipped and on_bad_image == "error":
        path, reason = dataset.skipped[0]
        raise DatasetError(f"{len(dataset.skipped)} image(s) cannot be used, e.g. {path}: "
                           f"{reason}; fix them or use on_bad_image='skip'")
    assign_splits(dataset, split_dir=split_dir, seed=seed, ratios=ratios)
    if verify_images:
        _verify(dataset, on_bad_image, verify_size, split_dir)
    if not dataset.records:
        raise DatasetError(f"no usable images under {dataset.root}; skipped: "
                           f"{short_list(p for p, _ in dataset.skipped)}")
    return dataset
