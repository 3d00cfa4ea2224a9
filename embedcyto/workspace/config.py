"""The workspace: which datasets a user works on, where results go, and what to run.

A workspace is one TOML file (``embedcyto.toml`` in the working folder, or the file named by
``--workspace`` or ``$EMBEDCYTO_WORKSPACE``), meant to be read and edited by hand. It is what lets
``embedcyto extract --model quilt``, ``embedcyto probe --episodes 600`` and ``embedcyto lora`` run
over every dataset with no per-dataset options. The field-by-field reference is
``docs/workspace.md``; ``embedcyto init`` writes one so nobody has to.

Paths in the file may be relative: they are relative to the folder holding the file, so a
workspace folder can be moved or shared as a whole.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from embedcyto.workspace.tomlio import WorkspaceError, dumps, loads

WORKSPACE_FILE = "embedcyto.toml"
WORKSPACE_ENV = "EMBEDCYTO_WORKSPACE"
DEFAULT_RATIOS = (0.7, 0.1, 0.2)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

HEADER = """embedcyto workspace: the datasets, models and LoRA plan that `embedcyto extract`,
`probe`, `lora`, `report` and `status` use when run in this folder.
Edit by hand or with `embedcyto datasets add|remove` and `embedcyto models add|remove`.
Relative paths are relative to this file's folder. Reference: docs/workspace.md."""


def check_name(name: str, what: str = "dataset") -> str:
    """A name safe as a folder name, a table cell and a TOML key: letters, digits, ``_.-``."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise WorkspaceError(f"{what} name {name!r} is not allowed: use letters, digits, '_', "
                             "'.' and '-', starting with a letter or digit")
    return name


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(table: Mapping, allowed, where: str) -> None:
    for key in table:
        if key not in allowed:
            raise WorkspaceError(f"unknown field {key!r} in {where}{_suggest(key, allowed)}; "
                                 f"allowed: {', '.join(allowed)}")


def _tuple(value, kind, where: str) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise WorkspaceError(f"{where} must be a list, e.g. [1, 2], not {value!r}")
    for item in value:
        if not isinstance(item, kind) or isinstance(item, bool):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise WorkspaceError(f"{where} must hold {names} values, not {item!r}")
    return tuple(value)


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of the workspace.

    Attributes:
        name: the dataset's name everywhere (``--dataset``, store folder, report rows).
        layout: how its root is read: an adapter of ``embedcyto datasets list``.
        root: its root folder, as written in the file (may be relative to the workspace).
        options: adapter options (e.g. ``csv_file`` for the csv layout).
        split_seed: seed of a generated split (datasets without an official one).
        ratios: train, val, test fractions of a generated split.
        prompts: a JSON file of class phrases and prompt templates (docs/text.md) used for
            this dataset by the text probes and ``embedcyto lora --head text``, as written
            (may be relative to the workspace); None: the prompts shipped for its layout.
    """

    name: str
    layout: str
    root: str
    options: tuple[tuple[str, str], ...] = ()
    split_seed: int = 0
    ratios: tuple[float, float, float] = DEFAULT_RATIOS
    prompts: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "options", tuple(sorted(dict(self.options).items())))
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        check_name(self.name)
        from embedcyto.datasets.registry import get_adapter

        try:
            get_adapter(self.layout)
        except Exception as err:  # DatasetError: re-say it in workspace terms
            raise WorkspaceError(f"dataset {self.name}: {err}") from None
        if len(self.ratios) != 3 or abs(sum(self.ratios) - 1) > 1e-6 or min(self.ratios) < 0:
            raise WorkspaceError(f"dataset {self.name}: ratios must be three non-negative "
                                 f"fractions summing to 1 (train, val, test), not {self.ratios}")

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"layout": self.layout, "root": self.root}
        if self.split_seed:
            out["split_seed"] = self.split_seed
        if tuple(self.ratios) != DEFAULT_RATIOS:
            out["ratios"] = list(self.ratios)
        if self.options:
            out["options"] = dict(self.options)
        if self.prompts is not None:
            out["prompts"] = self.prompts
        return out

    @classmethod
    def from_dict(cls, name: str, table: Mapping) -> "DatasetEntry":
        where = f"[datasets.{name}]"
        _check_keys(table, ("layout", "root", "split_seed", "ratios", "options", "prompts"),
                    where)
        prompts = table.get("prompts")
        if prompts is not None and (not isinstance(prompts, str) or not prompts.strip()):
            raise WorkspaceError(f"{where} prompts must be the path of a JSON prompts file, "
                                 f"e.g. prompts = \"prompts/{name}.json\", not {prompts!r}")
        for required in ("layout", "root"):
            if required not in table:
                raise WorkspaceError(f"{where} needs {required} = ...")
        options = table.get("options", {})
        if not isinstance(options, Mapping):
            raise WorkspaceError(f"{where} options must be a table of KEY = \"value\"")
        ratios = _tuple(table.get("ratios", DEFAULT_RATIOS), (int, float), f"{where} ratios")
        seed = table.get("split_seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise WorkspaceError(f"{where} split_seed must be an integer, not {seed!r}")
        return cls(name=name, layout=str(table["layout"]), root=str(table["root"]),
                   options=tuple(sorted((str(k), str(v)) for k, v in options.items())),
                   split_seed=seed, ratios=tuple(float(r) for r in ratios), prompts=prompts)


@dataclass(frozen=True)
class LoraPlan:
    """One named group of LoRA runs: every (model, dataset, shots or fraction, seed).

    Attributes:
        name: the plan's name (``[lora.NAME]``).
        models: cards to fine-tune.
        datasets: workspace datasets (empty: all of them).
        shots: training images per class (few-shot runs).
        fractions: percentages of the training split (data-fraction runs).
        seeds: one run per seed.
        settings: LoRA run settings that differ from embedcyto's defaults (rank, targets, lr,
            epochs...); checked against the LoRA configuration when the plan runs.
    """

    name: str
    models: tuple[str, ...]
    datasets: tuple[str, ...] = ()
    shots: tuple[int, ...] = ()
    fractions: tuple[float, ...] = ()
    seeds: tuple[int, ...] = (1, 2, 3)
    settings: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "settings",
                           tuple(sorted((k, _frozen(v)) for k, v in dict(self.settings).items())))
        check_name(self.name, "LoRA plan")
        if not self.models:
            raise WorkspaceError(f"[lora.{self.name}] needs models = [...]")
        if not self.shots and not self.fractions:
            raise WorkspaceError(f"[lora.{self.name}] needs shots = [...] or fractions = [...]")
        if any(s < 1 for s in self.shots):
            raise WorkspaceError(f"[lora.{self.name}] shots must be at least 1")
        if any(not 0 < f <= 100 for f in self.fractions):
            raise WorkspaceError(f"[lora.{self.name}] fractions are percentages in (0, 100]")
        if not self.seeds:
            raise WorkspaceError(f"[lora.{self.name}] needs at least one seed")

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"models": list(self.models)}
        if self.datasets:
            out["datasets"] = list(self.datasets)
        if self.shots:
            out["shots"] = list(self.shots)
        if self.fractions:
            out["fractions"] = list(self.fractions)
        out["seeds"] = list(self.seeds)
        if self.settings:
            out["settings"] = dict(self.settings)
        return out

    @classmethod
    def from_dict(cls, name: str, table: Mapping) -> "LoraPlan":
        where = f"[lora.{name}]"
        _check_keys(table, ("models", "datasets", "shots", "fractions", "seeds", "settings"),
                    where)
        settings = table.get("settings", {})
        if not isinstance(settings, Mapping):
            raise WorkspaceError(f"{where} settings must be a table")
        return cls(
            name=name, models=_tuple(table.get("models", ()), str, f"{where} models"),
            datasets=_tuple(table.get("datasets", ()), str, f"{where} datasets"),
            shots=_tuple(table.get("shots", ()), int, f"{where} shots"),
            fractions=_tuple(table.get("fractions", ()), (int, float), f"{where} fractions"),
            seeds=_tuple(table.get("seeds", (1, 2, 3)), int, f"{where} seeds"),
            settings=tuple(sorted((str(k), _frozen(v)) for k, v in settings.items())))


def _frozen(value):
    return tuple(value) if isinstance(value, list) else value


_FOLDERS = {"store": "cache", "results": "results", "runs": "runs", "report": "report"}


@dataclass(frozen=True)
class Workspace:
    """A parsed workspace file. ``base`` is the folder relative paths are resolved against.

    Folder fields hold the paths as written; use :meth:`folder` for the resolved path.
    """

    base: Path
    store: str = "cache"
    results: str = "results"
    runs: str = "runs"
    report: str = "report"
    weights_dir: str | None = None
    models: tuple[str, ...] = ()
    datasets: tuple[DatasetEntry, ...] = ()
    lora: tuple[LoraPlan, ...] = ()
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self):
        names = [d.name for d in self.datasets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise WorkspaceError(f"dataset names must be unique; repeated: {', '.join(dupes)}")
        for plan in self.lora:
            for name in plan.datasets:
                if name not in names:
                    raise WorkspaceError(f"[lora.{plan.name}] names dataset {name!r}, which is "
                                         f"not in [datasets]{_suggest(name, names)}")

    def resolve(self, path: str | os.PathLike) -> Path:
        """A path of the file, made absolute against the workspace folder (``~`` expanded)."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.base / path

    def folder(self, kind: str) -> Path:
        """The resolved ``store``, ``results``, ``runs`` or ``report`` folder."""
        if kind not in _FOLDERS:
            raise KeyError(kind)
        return self.resolve(getattr(self, kind))

    @property
    def dataset_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.datasets)

    def dataset(self, name: str) -> DatasetEntry:
        """The dataset called ``name``; an unknown name lists the ones there are."""
        for entry in self.datasets:
            if entry.name == name:
                return entry
        known = ", ".join(self.dataset_names) or "none yet"
        raise WorkspaceError(f"no dataset {name!r} in the workspace{_suggest(name, self.dataset_names)}"
                             f" (it has: {known}); add it with `embedcyto datasets add {name}` "
                             "and `layout=LAYOUT`, `root=PATH`")

    def dataset_root(self, name: str) -> Path:
        return self.resolve(self.dataset(name).root)

    def prompts_files(self) -> dict[str, Path]:
        """Dataset name -> its resolved prompts file, for the datasets that name one."""
        return {d.name: self.resolve(d.prompts) for d in self.datasets if d.prompts is not None}

    def with_dataset(self, entry: DatasetEntry, *, replace_existing: bool = False) -> "Workspace":
        if entry.name in self.dataset_names and not replace_existing:
            raise WorkspaceError(f"the workspace already has a dataset {entry.name!r}; remove it "
                                 f"first (`embedcyto datasets remove {entry.name}`) or choose "
                                 "another name")
        kept = tuple(d for d in self.datasets if d.name != entry.name)
        return replace(self, datasets=kept + (entry,))

    def without_dataset(self, name: str) -> "Workspace":
        self.dataset(name)
        plans = tuple(replace(p, datasets=tuple(d for d in p.datasets if d != name))
                      if name in p.datasets and len(p.datasets) > 1 else p
                      for p in self.lora)
        used = [p.name for p in plans if name in p.datasets]
        if used:
            raise WorkspaceError(f"dataset {name!r} is the only dataset of LoRA plan(s) "
                                 f"{', '.join(used)}; edit [lora] in the workspace first")
        return replace(self, datasets=tuple(d for d in self.datasets if d.name != name),
                       lora=plans)

    def with_models(self, models) -> "Workspace":
        merged = list(self.models) + [m for m in models if m not in self.models]
        return replace(self, models=tuple(merged))

    def without_models(self, models) -> "Workspace":
        missing = [m for m in models if m not in self.models]
        if missing:
            raise WorkspaceError(f"not in the default models: {', '.join(missing)} (they are: "
                                 f"{', '.join(self.models) or 'none'})")
        return replace(self, models=tuple(m for m in self.models if m not in models))

    def to_dict(self) -> dict:
        head: dict[str, Any] = {k: getattr(self, k) for k in _FOLDERS}
        head["weights_dir"] = self.weights_dir
        head["models"] = list(self.models)
        out: dict[str, Any] = {"workspace": head}
        out["datasets"] = {d.name: d.to_dict() for d in self.datasets}
        if self.lora:
            out["lora"] = {p.name: p.to_dict() for p in self.lora}
        return out

    def dumps(self) -> str:
        return dumps(self.to_dict(), header=HEADER)

    @classmethod
    def from_dict(cls, data: Mapping, base: Path, path: Path | None = None) -> "Workspace":
        _check_keys(data, ("workspace", "datasets", "lora"), "the workspace file")
        head = data.get("workspace", {})
        _check_keys(head, tuple(_FOLDERS) + ("weights_dir", "models"), "[workspace]")
        datasets = data.get("datasets", {})
        plans = data.get("lora", {})
        for table, name in ((datasets, "[datasets]"), (plans, "[lora]")):
            if not isinstance(table, Mapping) or not all(isinstance(v, Mapping)
                                                         for v in table.values()):
                raise WorkspaceError(f"{name} must hold one sub-table per entry, e.g. "
                                     f"[{name[1:-1]}.NAME]")
        folders = {k: str(head.get(k, v)) for k, v in _FOLDERS.items()}
        weights_dir = head.get("weights_dir")
        return cls(base=base, path=path, **folders,
                   weights_dir=None if weights_dir is None else str(weights_dir),
                   models=_tuple(head.get("models", ()), str, "[workspace] models"),
                   datasets=tuple(DatasetEntry.from_dict(n, t) for n, t in datasets.items()),
                   lora=tuple(LoraPlan.from_dict(n, t) for n, t in plans.items()))


def find_workspace(path: str | os.PathLike | None = None, *, cwd: str | os.PathLike | None = None,
                   environ: Mapping[str, str] | None = None) -> Path | None:
    """The workspace file in use: ``path``, else ``$EMBEDCYTO_WORKSPACE``, else
    ``embedcyto.toml`` in the working folder or the nearest folder above it; None if none.

    A path given explicitly (argument or environment) must exist: a typo is an error, not a
    silent run without the workspace.
    """
    environ = os.environ if environ is None else environ
    explicit = path or environ.get(WORKSPACE_ENV) or None
    if explicit:
        candidate = Path(explicit).expanduser()
        if candidate.is_dir():
            candidate = candidate / WORKSPACE_FILE
        if not candidate.is_file():
            source = "the workspace given (`workspace=`)" if path else f"${WORKSPACE_ENV}"
            raise WorkspaceError(f"{source} names {candidate}, which does not exist; create it "
                                 f"with `embedcyto init` in {candidate.parent}, or fix the path")
        return candidate.resolve()
    here = Path(cwd or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / WORKSPACE_FILE
        if candidate.is_file():
            return candidate
    return None


def load_workspace(path: str | os.PathLike) -> Workspace:
    """Read and check a workspace file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise WorkspaceError(f"cannot read the workspace {path}: {err}") from err
    return Workspace.from_dict(loads(text, source=str(path)), base=path.parent.resolve(),
                               path=path.resolve())


def save_workspace(workspace: Workspace, path: str | os.PathLike | None = None) -> Path:
    """Write ``workspace`` to ``path`` (default: where it was read from), atomically."""
    from embedcyto.fsio import atomic_write_text

    target = Path(path) if path is not None else workspace.path
    if target is None:
        raise WorkspaceError("this workspace was not read from a file: give the path to write")
    text = workspace.dumps()
    # What is written must read back as the same workspace.
    Workspace.from_dict(loads(text, source=str(target)), base=workspace.base)
    return atomic_write_text(target, text)
