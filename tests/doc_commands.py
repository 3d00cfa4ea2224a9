"""Test helper: the shell commands of README.md and docs/, as a reader would paste them.

Fenced blocks marked ``bash`` (or unmarked blocks whose lines start with ``embedcyto`` or
``python -m pipelines``) are read; backslash continuations are joined and ``# comments``
dropped. The tests run the commands that need no real dataset, weights or earlier results:
listing datasets and models, ``--help``, ``--smoke`` recipes and the demo.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
OURS = ("embedcyto ", "python -m pipelines", "python3 -m venv", "source ")
SELF_CONTAINED = re.compile(r"^embedcyto (datasets list|models list|models show \S+|demo)\b|"
                            r"^(embedcyto|python -m pipelines\.\w+)\b.*(--help|--smoke)\b")


def commands(page: Path) -> list[str]:
    out = []
    for lang, body in FENCE.findall(page.read_text(encoding="utf-8")):
        lines = body.replace("\\\n", " ").splitlines()
        candidates = [re.sub(r"\s+#.*$", "", line).strip() for line in lines]
        candidates = [c for c in candidates if c and not c.startswith("#")]
        if lang == "bash" or (lang == "" and candidates and
                              all(c.startswith(OURS) for c in candidates)):
            out += [re.sub(r"\s+", " ", c) for c in candidates]
    return out


def runnable(command: str) -> bool:
    """True for a command that needs no real data, weights or earlier results (nor set-up)."""
    return bool(SELF_CONTAINED.search(command))
