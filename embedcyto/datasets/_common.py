"""Helpers shared by the dataset adapters: finding folders and images, safe paths, errors.

Adapters only list files and assign labels; they never decode pixels (that is
:mod:`embedcyto.datasets.images`, run at open time only when ``verify_images=True``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from embedcyto.datasets.generated import is_generated
from embedcyto.datasets.records import SPLITS, Dataset, Record
from embedcyto.errors import DatasetError
from embedcyto.names import has_control_characters, name_problem

#: File extensions read as images (lower case). Everything else (``.dat``, ``.txt``,
#: ``Thumbs.db``...) is ignored, as are hidden files and folders.
IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")

#: Folder names accepted for each split in pre-split layouts (compared in lower case).
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}

_MAX_LISTED = 8


def short_list(names: Iterable[str], limit: int = _MAX_LISTED) -> str:
    """``a, b, c`` with an ``... (N more)`` tail, for error messages that must stay readable."""
    names = list(names)
    if not names:
        return "(nothing)"
    head = ", ".join(names[:limit])
    return head if len(names) <= limit else f"{head}, ... ({len(names) - limit} more)"


def require_root(root: str | os.PathLike, layout: str) -> Path:
    """Return ``root`` as a Path, or explain that it is missing and which layout is expected."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset root {path} does not exist; the root (`root=PATH`) must be "
                           f"the folder that holds {layout}")
    if not path.is_dir():
        raise DatasetError(f"dataset root {path} is a file, not a folder; the root (`root=PATH`) "
                           f"must be the folder that holds {layout}")
    return path


def is_hidden(name: str) -> bool:
    """Hidden files and OS litter (``.DS_Store``, ``__MACOSX``) are never data."""
    return name.startswith(".") or name == "__MACOSX"


def child_dirs(folder: Path) -> list[Path]:
    """Visible sub-folders of ``folder``, sorted by name."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name)),
                  key=lambda p: p.name)


def visible_names(folder: Path) -> list[str]:
    """Names of the visible entries of ``folder`` (for "found: ..." in error messages)."""
    return sorted(p.name for p in folder.iterdir() if not is_hidden(p.name))


def file_problem(path: Path) -> str | None:
    """Why a listed ``path`` cannot be read as an image file ("the file is missing", "it is a
    folder, not an image file"...), or None when it is a regular file."""
    if path.is_file():
        return None
    if path.is_symlink():
        return "it is a symlink whose target is missing"
    if path.is_dir():
        return "it is a folder, not an image file"
    if path.exists():
        return "it is not a regular file"
    return "the file is missing"


def _outside(path: Path, root: Path, target: Path) -> DatasetError:
    return DatasetError(
        f"{path} is a symlink to {target}, outside the dataset root {root}; embedcyto reads only "
        "files inside the root: copy the files into the root, or choose a root (`root=PATH`) "
        "that holds them")


def check_inside(folder: Path, root: Path) -> None:
    """Refuse a folder (say, a symlinked class folder) that resolves outside ``root``."""
    target = folder.resolve()
    if not target.is_relative_to(root.resolve()):
        raise _outside(folder, root, target)


def _scan(folder: Path, root: Path, extensions: tuple[str, ...], recursive: bool,
          found: list[Path], skipped: list[tuple[str, str]]) -> None:
    """Collect image files under ``folder``; report entries named like images that are not
    usable files; refuse symlinks that leave ``root``."""
    with os.scandir(folder) as entries:
        entries = sorted(entries, key=lambda e: e.name)
    for entry in entries:
        if is_hidden(entry.name):
            continue
        path = Path(entry.path)
        image_name = path.suffix.lower() in extensions
        if entry.is_symlink():
            try:
                target = path.resolve()
            except (RuntimeError, OSError):  # a symlink loop
                target = path
            if not target.exists():
                if image_name:
                    skipped.append((relative_posix(root, path),
                                    "a symlink whose target is missing"))
                continue
            if not target.is_relative_to(root.resolve()) and (image_name or target.is_dir()):
                raise _outside(path, root, target)
            if target.is_dir():
                skipped.append((relative_posix(root, path), "a symlink to a folder; not "
                                "followed (move the folder into place to include it)"))
                continue
        elif entry.is_dir():
            if image_name:
                skipped.append((relative_posix(root, path), "a folder named like an image; "
                                "not read (rename it if it holds images)"))
            elif recursive:
                _scan(path, root, extensions, recursive, found, skipped)
            continue
        if not image_name:
            continue
        if has_control_characters(entry.name):
            skipped.append((relative_posix(root, path), "its name contains a control character"))
        elif not path.is_file():
            skipped.append((relative_posix(root, path), "not a regular file"))
        else:
            found.append(path)


def list_images(folder: Path, root: Path, skipped: list[tuple[str, str]], *,
                recursive: bool = True,
                extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files under ``folder`` (recursively by default, skipping hidden entries), sorted.

    Entries named like images that cannot be read as one (a broken symlink, a folder called
    ``x.png``, a special file) and symlinked folders (never followed, so no image is listed
    twice) are appended to ``skipped`` with the reason.

    Raises:
        DatasetError: ``folder``, or a symlinked image or folder under it, resolves outside
            ``root`` (the same rule as for names read from a label file).
    """
    check_inside(folder, root)
    found: list[Path] = []
    _scan(folder, root, extensions, recursive, found, skipped)
    return sorted(found)


def loose_images(root: Path, folder: Path, skipped: list[tuple[str, str]]) -> None:
    """Report image files lying directly in ``folder`` where only class folders belong."""
    for path in list_images(folder, root, [], recursive=False):
        skipped.append((relative_posix(root, path), "not inside a class folder, so its class "
                        "is unknown"))


def class_folder_records(root: Path, folder: Path, label: int, skipped: list[tuple[str, str]],
                         split: str | None = None) -> list[Record]:
    """One record per image under a class folder; an empty class folder is an error.

    Raises:
        DatasetError: the folder holds no images (a wrong folder, or a failed unpacking), or
            a symlink under it leaves the root.
    """
    images = list_images(folder, root, skipped)
    if not images:
        raise empty_class_error(folder)
    return [Record(path=relative_posix(root, p), label=label, split=split) for p in images]


def relative_posix(root: Path, path: Path) -> str:
    """``path`` relative to ``root`` with POSIX separators: the stable row id of an image."""
    return path.relative_to(root).as_posix()


def split_of_folder(name: str) -> str | None:
    """The split a folder name stands for (``train``/``val``/``test``), or None."""
    return SPLIT_ALIASES.get(name.lower())


def presplit_dirs(root: Path) -> dict[str, Path]:
    """Split folders directly under ``root`` (e.g. ``train/``, ``val/``, ``test/``).

    Raises:
        DatasetError: two folders name the same split (``val/`` and ``valid/``).
    """
    found: dict[str, Path] = {}
    for sub in child_dirs(root):
        split = split_of_folder(sub.name)
        if split is None:
            continue
        if split in found:
            raise DatasetError(f"{root} has two folders for the {split} split: "
                               f"{found[split].name}/ and {sub.name}/; keep only one")
        found[split] = sub
    return found


def empty_class_error(folder: Path, what: str = "images") -> DatasetError:
    return DatasetError(
        f"class folder {folder} contains no {what} (looked for "
        f"{', '.join(IMAGE_EXTENSIONS)}); add its images or remove the folder")


def read_utf8(csv_file: Path) -> str:
    """A label file's text; a file that is not UTF-8 is refused with the line of its first bad
    byte (rather than a UnicodeDecodeError traceback)."""
    data = csv_file.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DatasetError(
            f"{csv_file}, line {line}: byte {data[err.start]:#04x} is not UTF-8 text; save the "
            "file as UTF-8 (a spreadsheet's \"CSV UTF-8\" format) and run again") from None


def safe_join(root: Path, name: str, where: str) -> Path:
    """Join a file name read from a label file onto ``root``, refusing anything that escapes it.

    Names in label files come from outside: an absolute path, a ``..`` component or a symlink
    that resolves outside ``root`` would let a label file make embedcyto read arbitrary files.

    Args:
        root: the dataset root.
        name: the name as written in the label file.
        where: "file, line N" for the error message.

    Raises:
        DatasetError: the name is empty, absolute, contains ``..``, or resolves outside root.
    """
    text = name.strip().replace("\\", "/")
    pure = PurePosixPath(text)
    if not text or pure.is_absolute() or (len(text) > 1 and text[1] == ":"):
        raise DatasetError(f"{where}: image name {name!r} is empty or absolute; label files must "
                           f"name images relative to the dataset root {root}")
    if has_control_characters(text):
        raise DatasetError(f"{where}: image name {name!r} contains a control character; fix the "
                           "label file")
    if ".." in pure.parts:
        raise DatasetError(f"{where}: image name {name!r} contains '..' and would escape the "
                           f"dataset root {root}; fix the label file")
    candidate = root.joinpath(*pure.parts)
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise DatasetError(f"{where}: image {name!r} resolves to {resolved}, outside the dataset "
                           f"root {root} (a symlink?); copy the image into the root instead")
    return candidate


def finish(name: str, adapter: str, root: Path, classes: tuple[str, ...],
           records: list[Record], skipped: list[tuple[str, str]] | None = None,
           official_split: bool = False, **extra) -> Dataset:
    """Build a :class:`Dataset` with records sorted by path (the documented order).

    Raises:
        DatasetError: a class name (of any label space) that stores or reports cannot carry.
    """
    spaces = [("class", classes)] + [(f"{s.name} class", s.classes)
                                     for s in extra.get("label_spaces", {}).values()]
    for what, names in spaces:
        for cls in names:
            problem = name_problem(cls, file_name=False)
            if problem is not None:
                raise DatasetError(f"{root}: {what} name {cls!r} {problem}; rename its folder "
                                   "or correct the label file")
    records = sorted(records, key=lambda r: r.path)
    if official_split and any(r.split not in SPLITS for r in records):
        raise DatasetError(f"{root}: some images have no split although the layout is pre-split")
    return Dataset(name=name, adapter=adapter, root=root, classes=tuple(classes),
                   records=records, official_split=official_split,
                   skipped=sorted(skipped or []), generated=is_generated(root), **extra)
