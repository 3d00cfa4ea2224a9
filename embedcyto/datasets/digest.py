"""Cheap content digests of image files: what tells a replaced image from the one it replaced.

A file's size and modification time do not: an image overwritten by another of the same size,
its mtime restored (as ``cp -p``, ``rsync -t`` or an unpacking tool do), looks unchanged, and
the store built from the old image would be reused with the old features. Hashing every byte of
every image on every run would cost as much as reading the dataset, so a digest hashes the size
and three 4 KiB blocks (start, middle, end), which differ between any two real images, and is
recomputed only for files whose status (size, mtime, ctime, inode) changed since it was made:
the kernel updates the ctime on every write or replacement and no tool can set it back.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BLOCK = 4096


def file_digest(path: str | os.PathLike) -> str | None:
    """``"<size>:<hash>"`` of a file's size and start, middle and end blocks; None when the
    file cannot be read (missing, a folder...)."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            digest = hashlib.blake2b(str(size).encode(), digest_size=16)
            if size <= 3 * BLOCK:
                digest.update(handle.read())
            else:
                for offset in (0, (size - BLOCK) // 2, size - BLOCK):
                    handle.seek(offset)
                    digest.update(handle.read(BLOCK))
    except OSError:
        return None
    return f"{size}:{digest.hexdigest()}"


def stat_key(path: str | os.PathLike) -> list[int] | None:
    """What must be unchanged for an earlier digest of ``path`` to still hold; None if missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def digests(root: Path, paths: list[str]) -> list[str | None]:
    """:func:`file_digest` of ``root / path`` for each path, read by a few threads."""
    if not paths:
        return []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda p: file_digest(root / p), paths))
