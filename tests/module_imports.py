"""Which embedcyto modules a test run imported: the fast profile must import every one.

The list of modules comes from the files under ``embedcyto/`` (not from importing the package,
which would import what it lists); a module counts when it is in ``sys.modules`` at the end of
the run, so only code the tests actually loaded counts, not a name mentioned in a test.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "embedcyto"


def embedcyto_modules(root: Path = PACKAGE) -> list[str]:
    """Dotted names of every module and package under ``root`` (``embedcyto``)."""
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def never_imported(loaded=None, root: Path = PACKAGE) -> list[str]:
    """The modules of ``root`` absent from ``loaded`` (default: this process's modules)."""
    loaded = sys.modules if loaded is None else loaded
    return [name for name in embedcyto_modules(root) if name not in loaded]


def whole_fast_profile(config) -> bool:
    """True for ``pytest -m "not slow"`` over the whole test folder (no file, -k or -x)."""
    paths = [Path(a.split("::")[0]).resolve() for a in config.args]
    whole = all(p == Path(__file__).resolve().parent or p == PACKAGE.parent for p in paths)
    return (config.getoption("markexpr") == "not slow" and whole
            and not config.getoption("keyword") and not config.getoption("maxfail"))
