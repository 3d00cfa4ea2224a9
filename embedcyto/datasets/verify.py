"""Checking that every image decodes, remembered between runs.

Decoding 40,000 cells takes tens of seconds; re-running a command that is otherwise a cache hit
must not pay it again. Results are kept in ``image_check.json`` beside the split file, one entry
per image: its status key (size, mtime, ctime, inode), its content digest
(:mod:`embedcyto.datasets.digest`) and the decode problem (None when it reads fine). An image
whose status is unchanged is not read at all; one whose status changed is digested again, and
decoded again only when its content changed (a copied dataset keeps its check results, a
replaced image is checked again, even with the old size and mtime).
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from embedcyto.datasets.digest import digests, stat_key
from embedcyto.datasets.images import image_problem
from embedcyto.datasets.records import Dataset
from embedcyto.fsio import atomic_write_json

log = logging.getLogger(__name__)

CHECK_FILE = "image_check.json"
_VERSION = 2


def _load(cache_file: Path | None, target_size: int | None) -> dict:
    if cache_file is None or not cache_file.exists():
        return {}
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        log.warning("ignoring unreadable %s; images will be checked again", cache_file)
        return {}
    if (not isinstance(data, dict) or data.get("version") != _VERSION
            or data.get("target_size") != target_size or not isinstance(data.get("files"), dict)):
        return {}
    return {p: e for p, e in data["files"].items()
            if isinstance(e, dict) and {"stat", "digest", "problem"} <= set(e)}


def _decode_all(dataset: Dataset, todo: list[int], target_size: int | None) -> dict:
    def check(i: int) -> str | None:
        return image_problem(dataset.root / dataset.records[i].path, target_size=target_size)

    if not todo:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return dict(zip(todo, pool.map(check, todo)))


def image_problems(dataset: Dataset, *, target_size: int | None = None,
                   cache_dir: Path | None = None) -> list[str | None]:
    """The decode problem of each record's image (None when it reads fine), in record order.

    Also fills ``dataset.file_digests``, so the dataset's fingerprint reads no file again.

    Args:
        dataset: the records to check.
        target_size: decode large JPEGs at reduced size, as extraction will.
        cache_dir: folder of ``image_check.json``; None checks everything, remembers nothing.
    """
    cache_file = Path(cache_dir) / CHECK_FILE if cache_dir is not None else None
    known = _load(cache_file, target_size)
    by_digest = {e["digest"]: e["problem"] for e in known.values()}
    paths = [rec.path for rec in dataset.records]
    keys = [stat_key(dataset.root / p) for p in paths]
    stale = [i for i, (p, key) in enumerate(zip(paths, keys))
             if key is None or known.get(p, {}).get("stat") != key]
    fresh_digests = dict(zip(stale, digests(dataset.root, [paths[i] for i in stale])))
    todo = [i for i in stale if fresh_digests[i] is None or fresh_digests[i] not in by_digest]
    decoded = _decode_all(dataset, todo, target_size)
    files, problems = {}, []
    for i, (path, key) in enumerate(zip(paths, keys)):
        if i in fresh_digests:
            digest = fresh_digests[i]
            problem = decoded[i] if i in decoded else by_digest[digest]
        else:
            digest, problem = known[path]["digest"], known[path]["problem"]
        problems.append(problem)
        if key is not None and digest is not None:
            files[path] = {"stat": key, "digest": digest, "problem": problem}
            dataset.file_digests[path] = digest
    if cache_file is not None and files != known:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache_file, {"version": _VERSION, "target_size": target_size,
                                       "files": files}, indent=None)
    log.info("%s: %d image(s) decoded, %d digested, %d known from %s", dataset.name, len(todo),
             len(stale), len(paths) - len(stale), cache_file)
    return problems
