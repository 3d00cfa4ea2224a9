"""The dependency rules of docs/architecture.md, checked on the imports of every module.

Imports are read from the source (``ast``), lazy ones inside functions included: a lazy import is
still a dependency, only a cheaper one.
"""

from __future__ import annotations

import pytest
from source_scan import imported_modules, modules


def package(module: str) -> str:
    """``embedcyto.store.reader`` -> ``store``; top-level modules are their own package."""
    parts = module.split(".")
    if parts[0] == "pipelines":
        return "pipelines"
    return parts[1] if len(parts) > 1 else "embedcyto"


def violations(importer: str, forbidden: set[str], *, allowed_importers=()) -> list[str]:
    """Imports from modules of package ``importer`` into packages in ``forbidden``."""
    found = []
    for module in modules():
        if package(module) != importer or module in allowed_importers:
            continue
        for target in sorted(imported_modules(module)):
            if package(target) in forbidden and package(target) != importer:
                found.append(f"{module} imports {target}")
    return found


LIBRARY = {"datasets", "backbones", "store", "extract", "probes", "lora", "report", "metrics",
           "fsio", "errors", "names", "parallel", "distributed", "_torchvision_compat",
           "embedcyto", "stats", "calibration", "predictions", "compare", "saved_probe",
           "predict", "folders", "configs", "schedule", "prompts", "textembed", "workspace"}

# package -> packages it must never import (each a row of the table in docs/architecture.md)
RULES = {
    "errors": LIBRARY | {"cli", "pipelines"},
    "names": LIBRARY | {"cli", "pipelines"},
    "folders": LIBRARY - {"workspace"} | {"cli", "pipelines"},  # workspace.current only
    "configs": LIBRARY - {"errors"} | {"cli", "pipelines"},
    "schedule": LIBRARY - {"errors"} | {"cli", "pipelines"},
    "fsio": LIBRARY - {"errors"} | {"cli", "pipelines"},
    "metrics": LIBRARY - {"errors"} | {"cli", "pipelines"},
    "stats": LIBRARY - {"errors"} | {"cli", "pipelines"},
    "calibration": LIBRARY - {"errors"} | {"cli", "pipelines"},
    "predictions": LIBRARY - {"errors", "fsio"} | {"cli", "pipelines"},
    "datasets": LIBRARY - {"errors", "fsio", "names"} | {"cli", "pipelines"},
    "backbones": LIBRARY - {"errors", "fsio", "_torchvision_compat", "configs"} | {"cli",
                                                                                "pipelines"},
    "store": {"backbones", "extract", "probes", "lora", "report", "cli", "pipelines"},
    "extract": {"probes", "lora", "report", "cli", "pipelines"},
    "probes": {"backbones", "extract", "lora", "report", "cli", "pipelines"},
    "lora": {"probes", "report", "cli", "pipelines"},
    "report": {"extract", "cli", "pipelines"},  # probes, lora: torch-free parts only, below
    "compare": {"extract", "lora", "cli", "pipelines"},
    "saved_probe": {"extract", "lora", "report", "cli", "pipelines"},
    "predict": {"report", "compare", "cli", "pipelines"},
    "parallel": LIBRARY - {"errors"} | {"cli", "pipelines"},
    "distributed": {"probes", "lora", "report", "cli", "pipelines"},
    "prompts": LIBRARY - {"errors"} | {"cli", "pipelines"},
    "textembed": {"extract", "probes", "lora", "report", "workspace", "cli", "pipelines"},
    "workspace": {"cli", "pipelines"},
    "pipelines": {"cli"},
}
# Rules the tree does not meet yet; strict, so each flips to a failure once it is met.
NOT_YET: dict[str, str] = {}


@pytest.mark.parametrize("importer", sorted(RULES))
def test_package_imports_follow_the_rules(importer, request):
    if importer in NOT_YET:
        request.applymarker(pytest.mark.xfail(reason=NOT_YET[importer], strict=True))
    assert not violations(importer, RULES[importer])


def test_the_report_reads_only_the_probe_registry_of_the_probes():
    found = [f"{m} imports {t}" for m in modules() if package(m) == "report"
             for t in imported_modules(m) if package(t) == "probes"
             and t not in ("embedcyto.probes", "embedcyto.probes.registry")]
    found += [f"{m} imports {t}" for m in modules() if package(m) == "report"
              for t in imported_modules(m) if package(t) == "lora"
              and t not in ("embedcyto.lora", "embedcyto.lora.config", "embedcyto.lora.runs")]
    assert not found


def test_only_the_cli_imports_the_cli():
    found = [f"{m} imports {t}" for m in modules() if package(m) not in ("cli", "pipelines")
             and m != "embedcyto.__main__" for t in imported_modules(m) if package(t) == "cli"]
    assert not found


def test_the_library_never_imports_the_recipes():
    found = [f"{m} imports {t}" for m in modules() if m.startswith("embedcyto")
             for t in imported_modules(m) if t.startswith("pipelines")]
    assert not found


def _cycles() -> list[list[str]]:
    """Import cycles between modules (a package's __init__ re-exporting its own modules, which
    those modules then import, is not counted: Python resolves it by import order)."""
    graph = {m: {t for t in imported_modules(m) if not modules()[t].name == "__init__.py"}
             for m in modules() if modules()[m].name != "__init__.py"}
    cycles, seen = [], set()
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start and len(path) > 1:
                    key = frozenset(path)
                    if key not in seen:
                        seen.add(key)
                        cycles.append(path)
                elif nxt not in path and nxt > start:
                    stack.append((nxt, path + [nxt]))
    return cycles


def test_no_import_cycles_between_modules():
    assert not _cycles()


def test_the_rules_catch_a_forbidden_import(monkeypatch):
    import source_scan

    real = source_scan.imported_modules
    fake = {"embedcyto.store.reader": real("embedcyto.store.reader") | {"embedcyto.backbones.cards"}}
    monkeypatch.setattr("test_architecture.imported_modules",
                        lambda m: fake.get(m) or real(m))
    assert violations("store", RULES["store"]) == [
        "embedcyto.store.reader imports embedcyto.backbones.cards"]


def test_every_package_has_a_section_in_the_architecture_page():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    packages = {package(m) for m in modules() if m.startswith("embedcyto.")} - {"__main__"}
    missing = [p for p in sorted(packages) if f"`{p}" not in page]
    assert not missing
