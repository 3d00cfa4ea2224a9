"""Result rows from probes and LoRA runs, read and turned into one flat record shape.

The probe stage writes one JSON line per task (``<results>/<dataset>.jsonl``) and the LoRA stage
one folder per run (``<runs>/lora/<dataset>/<model>/<mode>/seed-S/``). Their fields differ (an
episode row holds a mean over episodes, a HiCervix row nests per-level metrics), so every source
is normalised here into a *record*, a plain dict with the same keys whatever its origin::

    dataset, model, method, shots (int | None), fraction (float | None), seed (int | None),
    accuracy, balanced_accuracy, macro_f1 (fractions in [0, 1]),
    levels ({"level_1": acc, ..., "average": acc, and "study25": the study's flat 25-class
        accuracy where it was computed; or None), variant (str), source (str),
    generated_data (bool: computed on generated images)

``method`` is a probe method (a row of :mod:`embedcyto.probes.registry`) or "lora".
``variant`` is a canonical JSON of the settings that change a result without being part
of the grid (probe options, LoRA settings and schedule); the aggregation refuses to average
records of different variants. The normalisers are pure functions so they can be tested on
hand-made rows; only :func:`load_probe_records` and :func:`load_lora_records` read files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedcyto import study25
from embedcyto.errors import LoraError, ReportError
from embedcyto.lora.config import RUNTIME_KEYS, LoraRunConfig
from embedcyto.lora.runs import COMPLETE, CONFIG_FILE, METRICS_FILE, RUN_GLOB, RUNS_SUBDIR
from embedcyto.probes.registry import HEADLINE_METRICS

METRICS = tuple(HEADLINE_METRICS)
VAL_ACCURACY = "val_accuracy"  # full-data probes: the kept model's accuracy on validation
LEVELS = ("level_1", "level_2", "level_3", "average")
#: The study's flat 25-class HiCervix accuracy, kept beside the official levels of a record.
STUDY25 = study25.RESULT_KEY
LORA = "lora"
#: True when a record's numbers come from generated images (a fixture or the demo's data);
#: rows and runs written before embedcyto recorded it read as real data.
GENERATED_DATA = "generated_data"
#: LoRA config fields that place a run in the grid or say where it executed; the others are
#: the settings that name a variant.
_LORA_RUNTIME = {"model", "dataset", "shots", "fraction", "seed", *RUNTIME_KEYS}


@dataclass
class Loaded:
    """Records read from disk, and what was found but left out (with the reason)."""

    records: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _number(value: Any, where: str) -> float:
    """A metric value; episode summaries nest it as ``{"mean": ...}``."""
    if isinstance(value, Mapping):
        value = value.get("mean")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportError(f"{where}: expected a number, found {value!r}")
    return float(value)


def _levels(levels: Mapping | None, where: str) -> dict[str, float] | None:
    """Per-level accuracies from either a full-data or an episode ``levels`` entry."""
    if not levels:
        return None
    out = {}
    for name, entry in levels.items():
        value = entry.get("accuracy") if isinstance(entry, Mapping) and "accuracy" in entry \
            else entry
        out[name] = _number(value, f"{where} levels.{name}")
    return out


def _add_study25(record: dict, found: Mapping, where: str) -> None:
    """The study's flat 25-class accuracy, kept beside the levels it was computed from."""
    if record["levels"] is not None and isinstance(found.get(STUDY25), Mapping):
        record["levels"][STUDY25] = _number(found[STUDY25].get("accuracy"),
                                            f"{where} {STUDY25}.accuracy")


def _canonical(data: Mapping) -> str:
    return json.dumps(data, sort_keys=True, default=str)


def probe_record(row: Mapping[str, Any], source: str = "") -> dict:
    """One probe results row (a line of ``<dataset>.jsonl``) as a record.

    Raises:
        ReportError: a required field is missing or not a number.
    """
    where = source or "probe row"
    try:
        metrics = row["metrics"]
        record = {"dataset": str(row["dataset"]), "model": str(row["model"]),
                  "method": str(row["method"]), "shots": row.get("shots"), "fraction": None,
                  "seed": row.get("seed")}
    except (KeyError, TypeError) as err:
        raise ReportError(f"{where}: not a probe results row (missing {err}); delete the line "
                          "or point `results_dir=` at embedcyto probe's output folder") from err
    for name in METRICS:
        if name not in metrics:
            raise ReportError(f"{where}: no {name} in its metrics")
        record[name] = _number(metrics[name], f"{where} {name}")
    record["levels"] = _levels(row.get("levels"), where)
    _add_study25(record, row, where)
    val = row.get("val_metrics") or {}
    record[VAL_ACCURACY] = _number(val["accuracy"], f"{where} val_metrics") if "accuracy" in val \
        else None
    record["variant"] = _canonical(row.get("options") or {})
    record["source"] = source
    record[GENERATED_DATA] = row.get(GENERATED_DATA) is True
    return record


def lora_record(config: Mapping[str, Any], metrics: Mapping[str, Any], source: str = "") -> dict:
    """One finished LoRA run (its ``config.json`` and ``metrics.json``) as a record.

    Raises:
        ReportError: the files do not hold what a finished run writes.
    """
    where = source or "LoRA run"
    run = config.get("config") if isinstance(config.get("config"), Mapping) else None
    test = metrics.get("test")
    if run is None or not isinstance(test, Mapping):
        raise ReportError(f"{where}: config.json has no 'config' or metrics.json no 'test' "
                          "entry; rerun it with `embedcyto lora` and `rerun=True`")
    try:
        record = {"dataset": str(run["dataset"]), "model": str(run["model"]), "method": LORA,
                  "shots": run.get("shots"), "fraction": run.get("fraction"),
                  "seed": run.get("seed")}
    except KeyError as err:
        raise ReportError(f"{where}: its config lacks {err}") from err
    for name in METRICS:
        record[name] = _number(test.get(name), f"{where} test.{name}")
    record["levels"] = _levels(metrics.get("levels"), where)
    _add_study25(record, metrics, where)
    record[VAL_ACCURACY] = None
    try:  # settings added since the run was written take their defaults (what it used)
        run = LoraRunConfig.from_dict(run).to_dict()
    except LoraError:
        pass
    record["variant"] = _canonical({k: v for k, v in run.items() if k not in _LORA_RUNTIME})
    record["source"] = source
    record[GENERATED_DATA] = config.get(GENERATED_DATA) is True
    return record


def load_probe_records(results_dir) -> Loaded:
    """Every row of every ``*.jsonl`` file in ``results_dir`` (none when it does not exist).

    Raises:
        ReportError: a line that is not JSON or not a probe row (file and line named).
    """
    out = Loaded()
    folder = Path(results_dir)
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ReportError(f"{where} is not JSON ({err}); delete that line or the file "
                                  "and probe again") from err
            out.records.append(probe_record(row, where))
    return out


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ReportError(f"cannot read {path} ({err}); rerun that LoRA run with "
                          "`embedcyto lora` and `rerun=True`") from err
    if not isinstance(data, dict):
        raise ReportError(f"{path} does not hold a JSON object")
    return data


def lora_run_folders(runs_dir) -> list[Path]:
    """Run folders under ``runs_dir/lora`` (or ``runs_dir`` itself when it is that folder).

    The layout is ``lora/<dataset>/<model>/<mode>/seed-S``; hidden folders (runs being written
    or left by an interrupted process) are not runs.
    """
    root = Path(runs_dir)
    base = root / RUNS_SUBDIR if (root / RUNS_SUBDIR).is_dir() else root
    if not base.is_dir():
        return []
    return sorted(p for p in base.glob(RUN_GLOB) if p.is_dir()
                  and not any(part.startswith(".") for part in p.relative_to(base).parts))


def load_lora_records(runs_dir, dataset: str | None = None) -> Loaded:
    """Records of every finished LoRA run (of ``dataset`` only, when given: other datasets'
    folders are not read); unfinished folders are listed in ``skipped``.

    Raises:
        ReportError: a finished run whose files cannot be read.
    """
    out = Loaded()
    for folder in lora_run_folders(runs_dir):
        if dataset is not None and folder.parts[-4] != dataset:
            continue
        if not (folder / COMPLETE).is_file():
            out.skipped.append((str(folder), f"no {COMPLETE} marker (unfinished run)"))
            continue
        out.records.append(lora_record(_read(folder / CONFIG_FILE),
                                       _read(folder / METRICS_FILE), str(folder)))
    return out
