"""The options and parsers shared by commands (``embedcyto/cli/_common.py``) are all in use."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ROOT / "embedcyto" / "cli" / "_common.py"


def _public_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.name for node in tree.body
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")]


def test_every_shared_cli_helper_is_used_by_some_command():
    """A helper no command uses is dead code that drifts from the option it once parsed."""
    sources = [p.read_text(encoding="utf-8")
               for folder in ("embedcyto", "pipelines") for p in (ROOT / folder).rglob("*.py")
               if p != COMMON]
    names = _public_functions(COMMON)
    assert "echo_columns" in names  # the parse found the module's helpers
    unused = [name for name in names if not any(name in text for text in sources)]
    assert unused == []
