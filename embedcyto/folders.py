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


def output_folder(kind: str, given=None) -> Path:
    """The folder a stage writes to: ``given``, else the workspace's (``embedcyto.toml``, see
    docs/workspace.md), else the default above. ``kind``: "results" (probe rows), "runs" or
    "report"."""
    if given is not None and str(given) != "":
        return Path(given).expanduser()
    from embedcyto.workspace.current import workspace_folder

    folder = workspace_folder(kind)
    if folder is not None:
        return folder / "probe" if kind == "results" else folder
    return {"results": DEFAULT_RESULTS_DIR, "runs": DEFAULT_RUNS_DIR,
            "report": DEFAULT_REPORT_DIR}[kind]
