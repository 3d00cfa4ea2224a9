"""Default folders of the stages' outputs, relative to the working directory.

Defined once here (a module importing nothing heavy), so the library functions that fall back to
them, the CLI options that document them and the pipelines agree. The store folder's default
(``$EMBEDCYTO_STORE``, else ``./cache``) lives with the store:
:func:`embedcyto.store.default_store_dir`.
"""

from __future__ import annotations

from pathlib import Path

#: ``embedcyto probe`` writes ``<dataset>.jsonl`` files here.
DEFAULT_RESULTS_DIR = Path("results") / "probe"
#: ``embedcyto lora`` writes run folders under ``<runs>/lora/``.
DEFAULT_RUNS_DIR = Path("runs")
#: ``embedcyto report`` writes ``report.md``, ``tables/`` and ``figures/`` here.
DEFAULT_REPORT_DIR = Path("report")
