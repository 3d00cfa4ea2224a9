"""The workspace's LoRA plans as concrete runs: what to train, what is done, how long the rest takes.

Each ``[lora.NAME]`` plan expands to every (dataset, model, shots or fraction, seed), in a
fixed order (plan, dataset, model, amount, seed as written in the file), so ``embedcyto lora``
always trains the runs in the same order and a stopped run list resumes where it stopped: a
finished run has a ``COMPLETE`` marker and is skipped.

The time estimate uses what the finished runs measured (training and test seconds per step of
the same model), not a guess; with nothing measured yet, it says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from embedcyto.workspace.config import LoraPlan, Workspace
from embedcyto.workspace.tomlio import WorkspaceError

#: ``settings`` keys of a plan that go to the adapters, the rest to the run configuration.
ADAPTER_KEYS = ("rank", "alpha", "dropout", "targets", "rslora")


@dataclass(frozen=True)
class PlannedRun:
    """One run of a plan and whether its finished folder exists."""

    plan: str
    config: object  # LoraRunConfig
    path: Path
    done: bool


def plan_configs(plan: LoraPlan, datasets: Sequence[str], *, device: str = "auto",
                 extra: dict | None = None) -> list:
    """Every run of ``plan`` on ``datasets`` as :class:`LoraRunConfig`, in plan order."""
    from embedcyto.lora.config import LoraRunConfig

    settings = dict(plan.settings)
    adapters = {k: settings.pop(k) for k in ADAPTER_KEYS if k in settings}
    known = {f.name for f in fields(LoraRunConfig)} - {"model", "dataset", "shots", "fraction",
                                                       "seed", "settings"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise WorkspaceError(f"[lora.{plan.name}.settings] has unknown setting(s) "
                             f"{', '.join(unknown)}; allowed: "
                             f"{', '.join(sorted(known | set(ADAPTER_KEYS)))}")
    settings = {"device": device, **settings, **(extra or {})}
    amounts = [{"shots": k} for k in plan.shots] + [{"fraction": float(f)}
                                                     for f in plan.fractions]
    return [LoraRunConfig(model=m, dataset=d, seed=s, settings=adapters, **a, **settings)
            for d in datasets for m in plan.models for a in amounts for s in plan.seeds]


def planned_runs(workspace: Workspace, runs_dir, *, plans: Sequence[str] = (),
                 models: Sequence[str] = (), datasets: Sequence[str] = (),
                 shots: Sequence[int] = (), fractions: Sequence[float] = (),
                 device: str = "auto", extra: dict | None = None) -> list[PlannedRun]:
    """The workspace's LoRA runs, narrowed by the given filters (empty: no filter).

    Raises:
        WorkspaceError: no plan in the workspace, or a filter that names nothing there.
    """
    from embedcyto.lora.runs import is_complete, run_dir

    if not workspace.lora:
        raise WorkspaceError(f"the workspace {workspace.path} has no LoRA plan: add a "
                             "[lora.NAME] table (models, shots or fractions, seeds; see "
                             "docs/workspace.md), or use the study's (`embedcyto init` with "
                             "`study=True`)")
    known = [p.name for p in workspace.lora]
    for name in plans:
        if name not in known:
            raise WorkspaceError(f"no LoRA plan {name!r} in the workspace (it has: "
                                 f"{', '.join(known)})")
    for name in datasets:
        workspace.dataset(name)
    out: list[PlannedRun] = []
    for plan in workspace.lora:
        if plans and plan.name not in plans:
            continue
        names = plan.datasets or workspace.dataset_names
        for config in plan_configs(plan, names, device=device, extra=extra):
            if (models and config.model not in models) or (datasets and config.dataset
                                                           not in datasets):
                continue
            if (shots or fractions) and not (config.shots in shots
                                             or config.fraction in fractions):
                continue
            path = run_dir(runs_dir, config)
            out.append(PlannedRun(plan.name, config, path, is_complete(path)))
    if not out:
        raise WorkspaceError("the filters leave no LoRA run of the workspace's plans: drop them "
                             "to run every planned one (`embedcyto status` counts them per "
                             "dataset and model)")
    return out


def measured_seconds_per_step(runs_dir) -> dict[str, float]:
    """Model → seconds per training step (test time included), from finished run folders."""
    import json

    per_model: dict[str, list[tuple[float, int]]] = {}
    for metrics in sorted(Path(runs_dir).glob("lora/*/*/*/seed-*/metrics.json")):
        if not (metrics.parent / "COMPLETE").is_file():
            continue
        try:
            data = json.loads(metrics.read_text(encoding="utf-8"))
            seconds = float(data["train_seconds"]) + float(data.get("test_seconds", 0.0))
            steps = int(data["iterations"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        model = metrics.parent.parent.parent.name
        per_model.setdefault(model, []).append((seconds, steps))
    return {m: sum(s for s, _ in v) / max(1, sum(n for _, n in v)) for m, v in per_model.items()}


def estimate_seconds(runs: Sequence[PlannedRun], rates: dict[str, float]) -> tuple[float, int]:
    """(seconds, runs without an estimate) for the runs still to do.

    Runs whose step count is known in advance (shots or explicit iterations) use the model's
    measured rate (else the slowest measured rate); fraction runs, whose length depends on the
    dataset's size, are counted as unestimated.
    """
    total, unknown = 0.0, 0
    fallback = max(rates.values()) if rates else None
    for run in runs:
        if run.done:
            continue
        config = run.config
        steps = config.iterations or (50 + 50 * config.shots if config.shots
                                      and getattr(config, "epochs", None) is None else None)
        rate = rates.get(config.model, fallback)
        if steps is None or rate is None:
            unknown += 1
            continue
        total += steps * rate
    return total, unknown
