"""Test helper: find traceback frames from embedcyto's own source files in a process's stderr.

A plain ``File ".*/embedcyto/`` pattern also matches third-party frames when the clone folder is
named ``embedcyto`` and the virtualenv lives inside it (``embedcyto/.venv/lib/.../torch/...``),
which is exactly the README's set-up. The package's real folder is the only reliable anchor.
"""

from __future__ import annotations

import re
from pathlib import Path

import embedcyto

PACKAGE_DIR = Path(embedcyto.__file__).resolve().parent


def own_frames(stderr: str, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Traceback lines (``File "..."``) that point into the embedcyto package itself."""
    prefixes = {str(package_dir), str(package_dir.resolve())}
    pattern = "|".join(re.escape(p + "/") for p in sorted(prefixes))
    return re.findall(rf'^\s*File "(?:{pattern})[^"]*".*$', stderr, flags=re.MULTILINE)
