"""Tables and figures from result files: probe rows and LoRA run folders.

``build_report(results_dir, runs_dir, out_dir)`` writes everything; the pieces are public for
users who want other layouts: :mod:`~embedcyto.report.records` (reading and normalising rows),
:mod:`~embedcyto.report.aggregate` (pure table and curve data), :mod:`~embedcyto.report.render`
(Markdown, CSV) and :mod:`~embedcyto.report.figures` (PNG, matplotlib imported on use).
"""

from __future__ import annotations

import importlib

__all__ = ["ReportError", "ReportResult", "build_report", "load_lora_records",
           "load_probe_records"]

_LAZY = {
    "ReportError": "embedcyto.report.records",
    "load_lora_records": "embedcyto.report.records",
    "load_probe_records": "embedcyto.report.records",
    "ReportResult": "embedcyto.report.build",
    "build_report": "embedcyto.report.build",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'embedcyto.report' has no attribute {name!r}")
