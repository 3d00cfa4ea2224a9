"""Where a study stands: for every dataset × model of the workspace, the store, probe rows and
LoRA runs, and which weights are missing. What ``embedcyto status`` prints.

A store is "stale" when it is finished but made from other inputs than the dataset has now
(images added, removed or replaced, another split): extraction would refuse to reuse it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from embedcyto.errors import EmbedcytoError, SplitError
from embedcyto.workspace.config import Workspace


@dataclass(frozen=True)
class Cell:
    """One (dataset, model) of the status matrix."""

    dataset: str
    model: str
    store: str  # complete | partial k/N | sharded k/N | missing | stale (...) | damaged (...)
    probe_rows: int = 0
    lora_done: int = 0
    lora_planned: int = 0


@dataclass(frozen=True)
class WorkspaceStatus:
    """The matrix, plus what is missing outright."""

    cells: tuple[Cell, ...]
    missing_weights: tuple[str, ...] = ()
    unreadable: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def cell(self, dataset: str, model: str) -> Cell:
        return next(c for c in self.cells if c.dataset == dataset and c.model == model)


def _current_identity(entry, workspace, store_dir) -> dict:
    """What a store of this dataset must have been made from now (no image is decoded again
    unless it changed since the last check)."""
    from embedcyto.datasets.splits import dataset_split_hash
    from embedcyto.store.h5format import rows_sha256
    from embedcyto.workspace.datasets import open_entry

    dataset, split_dir = open_entry(entry, workspace, store_dir)
    return {"dataset_fingerprint": dataset.fingerprint(), "rows_sha256": rows_sha256(dataset),
            "split_hash": dataset_split_hash(dataset, split_dir)}


def _store_state(info, current: dict | None) -> str:
    from embedcyto.store.h5format import read_store_provenance

    if info is None:
        return "missing"
    if info.state in ("damaged", "invalid"):
        return f"damaged ({info.problem})"
    if info.state != "complete":
        return f"{info.state} {info.rows_done}/{info.rows}"
    if current is None:
        return "complete (dataset unreadable: not checked)"
    try:
        made_from = read_store_provenance(info.path)
    except EmbedcytoError as err:
        return f"damaged ({err})"
    if "split" in current:
        return "stale (the dataset no longer matches its saved split)"
    changed = [k for k, v in current.items() if made_from.get(k) not in (None, v)]
    return f"stale ({', '.join(changed)} changed)" if changed else "complete"


def _probe_rows(results_dir: Path, dataset: str) -> dict[str, int]:
    from embedcyto.probes.runner import read_results

    counts: dict[str, int] = {}
    for row in read_results(results_dir / f"{dataset}.jsonl"):
        counts[row.get("model")] = counts.get(row.get("model"), 0) + 1
    return counts


def workspace_status(workspace: Workspace, models: Sequence[str] | None = None, *,
                     weights_dir=None) -> WorkspaceStatus:
    """The status matrix of ``workspace`` over ``models`` (default: the workspace's models,
    plus every model that has a store or a planned LoRA run)."""
    from embedcyto.store import list_stores
    from embedcyto.workspace.lora_plan import planned_runs
    from embedcyto.workspace.preflight import missing_weights

    store_dir = workspace.folder("store")
    infos = {(i.dataset, i.model): i for i in list_stores(store_dir)} if store_dir.is_dir() \
        else {}
    runs = planned_runs(workspace, workspace.folder("runs")) if workspace.lora else []
    if models is None:
        seen = list(workspace.models)
        extra = [m for (d, m) in infos if d in workspace.dataset_names and "+lora-" not in m]
        extra += [r.config.model for r in runs]
        models = seen + sorted(set(extra) - set(seen))
    cells, unreadable = [], []
    for entry in workspace.datasets:
        current = None
        if any((entry.name, m) in infos for m in models):
            try:
                current = _current_identity(entry, workspace, store_dir)
            except SplitError as err:  # images added or removed since the split was saved
                current = {"split": str(err).splitlines()[0]}
            except EmbedcytoError as err:
                unreadable.append((entry.name, str(err).splitlines()[0]))
        rows = _probe_rows(workspace.folder("results") / "probe", entry.name)
        for model in models:
            mine = [r for r in runs if r.config.dataset == entry.name and r.config.model == model]
            cells.append(Cell(entry.name, model, _store_state(infos.get((entry.name, model)),
                                                              current),
                              probe_rows=rows.get(model, 0),
                              lora_done=sum(r.done for r in mine), lora_planned=len(mine)))
    weights = missing_weights(models, weights_dir or workspace.weights_dir and
                              workspace.resolve(workspace.weights_dir))
    return WorkspaceStatus(tuple(cells), tuple(w.splitlines()[0] for w in weights),
                           tuple(unreadable))


def format_status(status: WorkspaceStatus) -> list[str]:
    """The matrix as text: one line per (dataset, model), then what is missing."""
    rows = [("DATASET", "MODEL", "STORE", "PROBE ROWS", "LORA")]
    for c in status.cells:
        lora = f"{c.lora_done}/{c.lora_planned}" if c.lora_planned else "-"
        rows.append((c.dataset, c.model, c.store, str(c.probe_rows), lora))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    for name, why in status.unreadable:
        lines.append(f"dataset {name} cannot be read now (stores not checked for staleness): {why}")
    if status.missing_weights:
        lines.append("missing weights:")
        lines.extend(f"  {w}" for w in status.missing_weights)
    return lines
