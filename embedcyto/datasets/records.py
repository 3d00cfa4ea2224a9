"""What every dataset adapter produces: records and label spaces, nothing model-specific."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One image of a dataset.

    Attributes:
        path: image path relative to the dataset root, POSIX separators. This is the row id used
            everywhere (stores, support sets, exports), so it must be stable across machines.
        label: index into ``Dataset.classes`` (the dataset's primary label space).
        split: "train", "val" or "test"; None until a split has been assigned.
        group: images sharing a group never straddle splits (SIPaKMeD: one cluster image).
        levels: HiCervix only: label index in each level's label space, -1 where the image has no
            label at that level (e.g. a cell labelled only ``AGC`` has no level-2 label).
    """

    path: str
    label: int
    split: str | None = None
    group: str | None = None
    levels: tuple[int, ...] | None = None


#: The name of the label space "the dataset's own classes" (``Dataset.classes``), beside the
#: named ``Dataset.label_spaces`` (a LoRA run's ``label_space`` defaults to it).
DATASET_CLASSES = "classes"


@dataclass(frozen=True)
class LabelSpace:
    """A named list of classes; labels are indices into ``classes``."""

    name: str
    classes: tuple[str, ...]


@dataclass
class Dataset:
    """Records of one dataset read from one root folder.

    Attributes:
        name: the dataset's key: names its store folder (``cache/<name>/``). The adapter name
            for the four known datasets; for ``folder``/``csv`` the name the user gives.
        adapter: adapter name ("sipakmed", "mlcc", "bcfc", "hicervix", "folder", "csv").
        root: the dataset root folder.
        classes: the primary label space (what ``Record.label`` indexes).
        records: one per image, in a deterministic order (sorted by path).
        label_spaces: extra named label spaces (HiCervix: "level_1", "level_2", "level_3",
            and the study's variant "level_3_study25"); ``Record.levels`` follows
            ``level_names`` order.
        level_names: names of the label spaces that ``Record.levels`` indexes, in order.
        hierarchy: child class name -> parent class name, across consecutive levels.
        level_maps: for each name in ``level_names``: primary class index -> class index in that
            level's label space, or -1 when the primary class is coarser than the level (HiCervix:
            ``AGC`` has no level-2 or level-3 class). Summing fine probabilities through this
            map gives the coarse-level prediction.
        official_split: True when the splits come from the dataset itself (HiCervix CSVs or a
            pre-split folder layout) rather than from embedcyto's seeded split.
        skipped: (path, reason) for images found but left out (documented, reported skips).
        split_hash: identity of the split the records carry: "official", the hash of the saved
            split file they were given (see :func:`embedcyto.datasets.splits.assign_splits`),
            or None for a split that was not saved.
        generated: True when the root holds the generated-data marker
            (:mod:`embedcyto.datasets.generated`): the images were drawn by a program
            (fixtures, ``embedcyto demo``), so results on them are flagged in the report.
        file_digests: image path -> content digest, filled as digests are computed (by the
            image check or by :meth:`fingerprint`); a cache, not part of the dataset's value.
    """

    name: str
    adapter: str
    root: Path
    classes: tuple[str, ...]
    records: list[Record]
    label_spaces: dict[str, LabelSpace] = field(default_factory=dict)
    level_names: tuple[str, ...] = ()
    hierarchy: dict[str, str] = field(default_factory=dict)
    level_maps: dict[str, tuple[int, ...]] = field(default_factory=dict)
    official_split: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)
    split_hash: str | None = None
    generated: bool = False
    file_digests: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def fingerprint(self) -> str:
        """A hash of what the dataset *is*: paths, labels, splits, groups, levels, file contents.

        Two reads of the same folder give the same fingerprint; adding, removing, relabelling,
        re-splitting or replacing any image changes it, even by a file of the same size and
        modification time. Each file enters through its content digest
        (:func:`embedcyto.datasets.digest.file_digest`: size and sampled blocks), not its mtime,
        so copying a dataset to another disk keeps its fingerprint. Digests already in
        ``file_digests`` (filled by the image check of ``open_dataset``) are reused. A generated
        dataset's fingerprint also says so (other datasets' fingerprints are unchanged by this),
        so removing the marker makes stores and LoRA runs made from the folder stale.
        """
        from embedcyto.datasets.digest import digests

        todo = [r.path for r in self.records if r.path not in self.file_digests]
        for path, digest in zip(todo, digests(self.root, todo)):
            if digest is not None:
                self.file_digests[path] = digest
        hasher = hashlib.sha256()
        hasher.update(json.dumps([self.name, list(self.classes)]).encode())
        if self.generated:
            hasher.update(b"generated")
        for rec in self.records:
            row = [rec.path, rec.label, rec.split, rec.group, list(rec.levels or ()),
                   self.file_digests.get(rec.path, "missing")]
            hasher.update(json.dumps(row).encode())
        return hasher.hexdigest()
