"""Checking that every image decodes, remembered between runs.

Decoding 40,000 cells takes tens of seconds; re-running a command that is otherwise a cache hit
must not pay it again. Results are kept in ``image_check.json`` beside the split file, keyed by
each file's path, size and modification time, so only new or changed files are decoded again.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from embedcyto.datasets.images import image_problem
from embedcyto.datasets.records import Dataset

log = logging.getLogger(__name__)

CHECK_FILE = "image_check.json"
_VERSION = 1


def _stat_key(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _load(cache_file: Path | None, target_size: int | None) -> dict:
    if cache_file is None or not cache_file.exists():
        return {}
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        log.warning("ignoring unreadable %s; images will be checked again", cache_file)
        return {}
    if data.get("version") != _VERSION or data.get("target_size") != target_size:
        return {}
    return data.get("files", {})


def _save(cache_file: Path, target_size: int | None, files: dict) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"version": _VERSION, "target_size": target_size, "files": files}))
    os.replace(tmp, cache_file)


def image_problems(dataset: Dataset, *, target_size: int | None = None,
                   cache_dir: Path | None = None) -> list[str | None]:
    """The decode problem of each record's image (None when it reads fine), in record order.

    Args:
        dataset: the records to check.
        target_size: decode large JPEGs at reduced size, as extraction will.
        cache_dir: folder of ``image_check.json``; None checks everything, remembers nothing.
    """
    cache_file = Path(cache_dir) / CHECK_FILE if cache_dir is not None else None
    known = _load(cache_file, target_size)
    keys = [_stat_key(dataset.root / rec.path) for rec in dataset.records]
    todo = [i for i, (rec, key) in enumerate(zip(dataset.records, keys))
            if key is None or known.get(rec.path, {}).get("stat") != key]

    def check(i: int) -> str | None:
        return image_problem(dataset.root / dataset.records[i].path, target_size=target_size)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        fresh = dict(zip(todo, pool.map(check, todo)))
    files = {}
    problems = []
    for i, (rec, key) in enumerate(zip(dataset.records, keys)):
        problem = fresh[i] if i in fresh else known[rec.path]["problem"]
        problems.append(problem)
        if key is not None:
            files[rec.path] = {"stat": key, "problem": problem}
    if cache_file is not None and (todo or len(files) != len(known)):
        _save(cache_file, target_size, files)
    log.info("%s: %d image(s) decoded, %d known from %s", dataset.name, len(todo),
             len(dataset.records) - len(todo), cache_file)
    return problems
