"""Running the stages over a workspace: what ``embedcyto extract``, ``probe`` and ``lora`` do
when given no dataset, and what the study's recipes (``pipelines/``) run.

Every stage is resumable because the library is: a finished store is a cache hit, probe rows
already in the results file are reused, a finished LoRA run is skipped. So running a stage again
(or with one more model) only computes what is missing. Inputs are checked first: every missing
root and weights file is listed before any work starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from embedcyto.errors import EmbedcytoError
from embedcyto.workspace.config import DatasetEntry, Workspace
from embedcyto.workspace.datasets import open_entry


def open_all(entries: Sequence[DatasetEntry], workspace: Workspace | None, store_dir, *,
             on_bad_image: str = "skip", verify_size: int | None = None, ranks=None) -> dict:
    """Open every dataset (splits saved beside the stores) before any work.

    Under torchrun rank 0 opens each first (it may write the split file), then the others.

    Raises:
        EmbedcytoError: listing every dataset that could not be read.
    """
    opened, problems = {}, []
    for entry in entries:
        def opener(entry=entry):
            return open_entry(entry, workspace, store_dir, on_bad_image=on_bad_image,
                              verify_size=verify_size)
        try:
            opened[entry.name] = opener() if ranks is None else ranks.rank0_first(opener)
        except EmbedcytoError as err:
            problems.append(f"  {entry.name}: {err}")
    if problems:
        raise EmbedcytoError("cannot read these datasets (nothing was run):\n"
                             + "\n".join(problems))
    return opened


@dataclass(frozen=True)
class ExtractLine:
    """One (dataset, model) of an extraction run, for the summary table."""

    dataset: str
    model: str
    rows: int
    computed: int
    cached: bool
    seconds: float
    images_per_second: float
    path: Path
    shard: str | None = None
    resumed: int = 0


def extract_stores(opened: dict, cards, *, store_dir, config, weights=None, weights_dir=None,
                   random_init: bool = False, shard=None, ranks=None,
                   on_line: Callable[[ExtractLine], None] | None = None) -> list[ExtractLine]:
    """Extract every (dataset, model) store; finished stores are cache hits.

    Tiny random-weight cards (``tiny-*``) always run with random weights.
    """
    from embedcyto.distributed import extract_sharded
    from embedcyto.extract import extract_features

    lines = []
    for name, (dataset, split_dir) in opened.items():
        for card in cards:
            kwargs = {"store_dir": store_dir, "split_dir": split_dir, "weights": weights,
                      "weights_dir": weights_dir, "random_init": random_init or
                      (card.random and weights is None), "config": config}
            if ranks is not None:
                result = extract_sharded(dataset, card, ranks=ranks, **kwargs)
            else:
                result = extract_features(dataset, card, shard=shard, **kwargs)
            line = ExtractLine(name, card.name, result.rows, result.computed, result.cache_hit,
                               result.seconds, result.images_per_second, result.path,
                               result.shard, result.resumed)
            lines.append(line)
            if on_line is not None:
                on_line(line)
    return lines


def extract_table(lines: Sequence[ExtractLine]) -> list[str]:
    """The end-of-run summary: dataset × model, rows, computed or cached, images per second."""
    rows = [("DATASET", "MODEL", "ROWS", "COMPUTED", "CACHED", "IMG/S")]
    for line in lines:
        rows.append((line.dataset, line.model, str(line.rows), str(line.computed),
                     "yes" if line.cached else "no",
                     f"{line.images_per_second:.1f}" if line.computed else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    computed = sum(line.computed for line in lines)
    cached = sum(line.cached for line in lines)
    out.append(f"{len(lines)} stores: {cached} cached, {len(lines) - cached} (re)computed, "
               f"{computed} images embedded")
    return out


def probe_datasets(workspace: Workspace | None, store_dir, names: Sequence[str] = ()):
    """The datasets ``probe`` runs on: ``names``, else the workspace's that have a complete store
    (None without a workspace: every dataset of the store folder).

    Raises:
        EmbedcytoError: a name that is neither a workspace dataset nor in the store folder (the
            known ones are listed), or a workspace none of whose datasets has a store yet.
    """
    from embedcyto.store import list_stores

    # A damaged store counts: the probe grid names it with its fix instead of "no store".
    have = {i.dataset for i in list_stores(store_dir) if i.state in ("complete", "damaged")} \
        if Path(store_dir).is_dir() else set()
    if names:
        for name in names:
            if name not in have and workspace is not None:
                workspace.dataset(name)  # not in the workspace either: lists its datasets
            if name not in have:
                raise EmbedcytoError(
                    f"no complete store of dataset {name!r} in {store_dir} (stores there: "
                    f"{', '.join(sorted(have)) or 'none'}); run `embedcyto extract` with "
                    f"`dataset={name}` first")
        return list(names)
    if workspace is None:
        return None
    found = [n for n in workspace.dataset_names if n in have]
    if not found:
        raise EmbedcytoError(f"no complete store of the workspace's datasets "
                             f"({', '.join(workspace.dataset_names) or 'none'}) in {store_dir}: "
                             "run `embedcyto extract` first (`embedcyto status` shows what "
                             "there is)")
    return found


def lora_plan_lines(runs, runs_dir) -> list[str]:
    """The ``--dry-run`` summary: runs, done, to do, and the estimated time of the rest."""
    from embedcyto.workspace.lora_plan import estimate_seconds, measured_seconds_per_step

    done = sum(r.done for r in runs)
    seconds, unknown = estimate_seconds(runs, measured_seconds_per_step(runs_dir))
    lines = [f"lora: {len(runs)} runs, {done} done, {len(runs) - done} to run"]
    if len(runs) == done:
        lines.append("estimated time: nothing left to run")
    elif unknown == len(runs) - done:
        lines.append("estimated time: unknown until a run of these models has finished "
                     "(the estimate uses the measured step rate)")
    else:
        text = f"estimated time: {_duration(seconds)} (from the measured step rate)"
        if unknown:
            text += f", plus {unknown} run(s) without an estimate"
        lines.append(text)
    for run in runs:
        state = "done" if run.done else "to run"
        c = run.config
        lines.append(f"  [{run.plan}] {c.dataset}/{c.model} {c.mode} seed-{c.seed}: {state}")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def dataset_prompts(workspace: Workspace | None, given=None):
    """The prompts files of the text methods and text heads: ``given`` (``--prompts FILE``) for
    every dataset, else each workspace dataset's ``prompts`` (a dict name -> file), else None
    (the prompts shipped for each dataset)."""
    if given is not None:
        return Path(given)
    if workspace is None:
        return None
    return workspace.prompts_files() or None


def prompts_for(prompts, dataset: str) -> Path | None:
    """One dataset's prompts file from what :func:`dataset_prompts` returned."""
    if isinstance(prompts, dict):
        return prompts.get(dataset)
    return prompts


def _check_prompts(runs, opened: dict, prompts) -> None:
    """Every text-head run's prompts read and checked before any run trains."""
    from embedcyto.lora.texthead import run_prompts

    for name in sorted({r.config.dataset for r in runs if r.config.head == "text"}):
        dataset = opened[name][0]
        run_prompts(dataset, dataset, prompts_for(prompts, name))


def train_runs(runs, opened: dict, *, runs_dir, weights=None, weights_dir=None,
               random_init: bool = False, rerun: bool = False, progress: bool = False,
               ranks=None, on_result: Callable | None = None, prompts=None) -> list:
    """Train every run not yet complete, in the given order.

    Finished runs go through :func:`train_lora` too: it skips an identical finished run without
    building anything, and refuses one whose folder holds other settings. ``prompts``: what
    :func:`dataset_prompts` returned (the class prompts of text-head runs).
    """
    from embedcyto.backbones import get_card
    from embedcyto.lora.train import train_lora

    _check_prompts(runs, opened, prompts)
    results = []
    for run in runs:
        dataset, split_dir = opened[run.config.dataset]
        card = get_card(run.config.model)
        result = train_lora(dataset, run.config, runs_dir=runs_dir, split_dir=split_dir,
                            weights=weights, weights_dir=weights_dir,
                            random_init=random_init or (card.random and weights is None),
                            rerun=rerun, progress=progress, ranks=ranks,
                            prompts_file=prompts_for(prompts, run.config.dataset))
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
