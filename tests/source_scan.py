"""Test helper: read embedcyto's and the recipes' sources as data (strings, imports, functions).

Used by the message tests (every option a message suggests exists) and the architecture tests
(dependency rules between packages). Pure ``ast``: nothing is imported or run.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("embedcyto", "pipelines")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    """Every Python module of the package and the recipes, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


@lru_cache(maxsize=None)
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _docstrings(module: ast.Module) -> set[int]:
    found = set()
    for node in ast.walk(module):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal but docstrings; f-strings with each placeholder as
    ``{}``."""
    out = []
    inside_fstrings = _docstrings(tree(path))
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                if isinstance(value, ast.Constant):
                    inside_fstrings.add(id(value))
                    parts.append(str(value.value))
                else:
                    parts.append("{}")
            out.append((node.lineno, "".join(parts)))
    for node in ast.walk(tree(path)):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in inside_fstrings):
            out.append((node.lineno, node.value))
    return out


def imported_modules(name: str) -> set[str]:
    """The embedcyto/pipelines modules ``name`` imports (anywhere in the file, lazily too)."""
    path = modules()[name]
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    known = modules()
    return {m for m in found if m in known and m != name}


def function_parameters(path: Path) -> set[str]:
    """Every parameter name of every function and dataclass field defined in ``path``."""
    names = set()
    for node in ast.walk(tree(path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            names.update(a.arg for a in args.posonlyargs + args.args + args.kwonlyargs)
        elif isinstance(node, ast.ClassDef):
            names.update(t.target.id for t in node.body
                         if isinstance(t, ast.AnnAssign) and isinstance(t.target, ast.Name))
    return names
