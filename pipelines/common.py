"""What every recipe shares: the study's configuration, command-line options, the check of
inputs before any work, and generated inputs for ``--smoke`` runs.

The configuration is data (``study.json`` beside this file): dataset folders and where to get
each dataset, the models, seeds, shots, episodes, and per-experiment settings; ``--config PATH``
replaces it. A recipe first finds everything it needs - every dataset root, every model's
weights - and stops before doing anything if one is missing, with a message listing all of them
and how to provide each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from embedcyto.errors import EmbedcytoError

CONFIG = Path(__file__).with_name("study.json")
SMOKE_MARKER = ".embedcyto-smoke-data"
#: ``--precision authors``: the precision the study's authors ran in (see :func:`precision_for`).
AUTHORS = "authors"
PRECISIONS = (AUTHORS, "auto", "fp32", "bf16", "fp16")


class MissingInputsError(EmbedcytoError):
    """Datasets or weights a recipe needs are not there (the message lists them all)."""


@dataclass(frozen=True)
class Settings:
    """One recipe run: resolved folders, the selection of datasets and models, the grid."""

    name: str
    config: dict
    smoke: bool
    data_root: Path | None
    weights_dir: Path | None
    store: Path
    results: Path
    runs: Path
    report: Path
    datasets: tuple[str, ...]
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    shots: tuple[int, ...]
    include_all: bool
    episodes: int
    device: str
    precision: str
    n_jobs: int
    download: bool
    dry_run: bool
    probe_options: dict = field(default_factory=dict)

    @property
    def probe_results(self) -> Path:
        """Where the probe stage's ``<dataset>.jsonl`` files go."""
        return self.results / "probe"


def load_config(path=None) -> dict:
    """The study configuration (``study.json`` unless ``path``)."""
    path = Path(path) if path else CONFIG
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise EmbedcytoError(f"cannot read the recipe configuration {path}: {err}") from err


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") \
            from None


def _shots(text: str) -> tuple[tuple[int, ...], bool]:
    """``"1,2,4,all"`` → ((1, 2, 4), True): "all" adds a run on the whole training split."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return _ints(",".join(p for p in parts if p != "all")), "all" in parts


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def make_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The options every recipe takes (a recipe may add its own)."""
    p = argparse.ArgumentParser(prog=f"python -m pipelines.{name}", description=description)
    p.add_argument("--data-root", type=Path, help="Folder holding one sub-folder per dataset: "
                   "bcfc/ mlcc/ sipakmed/ hicervix/ (names from the configuration).")
    p.add_argument("--weights-dir", type=Path, help="Local weights folder holding "
                   "<model>/<file> (default: $EMBEDCYTO_WEIGHTS, then the Hugging Face cache).")
    p.add_argument("--store", type=Path, help="Feature store folder (default: cache).")
    p.add_argument("--results", type=Path, help="Results folder; probe rows go to "
                   "RESULTS/probe (default: results).")
    p.add_argument("--runs", type=Path, help="LoRA run folders root (default: runs).")
    p.add_argument("--report", type=Path, help=f"Report folder (default: report/{name}).")
    p.add_argument("--datasets", type=_names, help="Comma-separated subset of the datasets.")
    p.add_argument("--models", type=_names, help="Comma-separated subset of the models.")
    p.add_argument("--seeds", type=_ints, help="Comma-separated seeds (default from config).")
    p.add_argument("--shots", type=_shots, help="Comma-separated shots per class; 'all' adds "
                   "the whole training split (default from config).")
    p.add_argument("--episodes", type=int, help="Few-shot episodes per (shots, seed).")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
    p.add_argument("--precision", choices=PRECISIONS, default=AUTHORS,
                   help="Frozen backbone precision for extraction and LoRA (default: the "
                        "authors': fp32, fp16 for CLIP models on a GPU; 'auto' is embedcyto's "
                        "own default, bf16 where the hardware has it).")
    p.add_argument("--n-jobs", type=int, default=1, help="Probe workers (joblib).")
    p.add_argument("--download", action="store_true", help="Let missing weights be fetched "
                   "from the Hugging Face hub (otherwise only local files are used).")
    p.add_argument("--dry-run", action="store_true", help="Check inputs, print the plan, stop.")
    p.add_argument("--smoke", action="store_true", help="Tiny random-weight models on generated "
                   "datasets (minutes on a CPU; checks the recipe, its numbers mean nothing).")
    p.add_argument("--smoke-dir", type=Path, default=Path("smoke"), help="With --smoke: default "
                   "folder for generated data, store, results, runs and report.")
    p.add_argument("--config", type=Path, help="Recipe configuration JSON (default: "
                   "pipelines/study.json).")
    return p


def settings_from_args(name: str, args: argparse.Namespace, *, default_models=None,
                       default_datasets=None) -> Settings:
    """Resolve folders and grid: explicit options, else smoke defaults, else the study's."""
    cfg = load_config(args.config)
    smoke = cfg["smoke"] if args.smoke else {}
    base = args.smoke_dir if args.smoke else Path(".")
    shots, include_all = getattr(args, "shots", None) or (
        tuple(smoke.get("shots", cfg["shots"])), False)
    models = args.models or tuple(default_models or smoke.get("models", cfg["models"]))
    return Settings(
        name=name, config=cfg, smoke=args.smoke,
        data_root=args.data_root or (base / "data" if args.smoke else None),
        weights_dir=args.weights_dir, store=args.store or base / "cache",
        results=args.results or base / "results", runs=args.runs or base / "runs",
        report=args.report or base / "report" / name,
        datasets=args.datasets or tuple(default_datasets or cfg["datasets"]),
        models=models, seeds=args.seeds or tuple(smoke.get("seeds", cfg["seeds"])),
        shots=tuple(shots), include_all=include_all,
        episodes=args.episodes or smoke.get("episodes", cfg["episodes"]),
        device=args.device, precision=args.precision, n_jobs=args.n_jobs, download=args.download, dry_run=args.dry_run,
        probe_options=_hashable(smoke.get("probe_options", cfg.get("probe_options", {}))))


def precision_for(settings: Settings, model: str) -> str:
    """The precision of one model's extraction and LoRA runs.

    ``authors`` (the recipes' default) is the study's: fp32, except the CLIP models (open_clip
    cards), which its code ran under fp16 autocast on the GPU; embedcyto holds their frozen
    weights in fp16 there (its nearest setting; LayerNorm and softmax then run in fp16 too,
    where autocast keeps them in fp32). On a CPU, where fp16 is not offered, every model runs
    in fp32. Any other value is passed on as is.
    """
    if settings.precision != AUTHORS:
        return settings.precision
    from embedcyto.backbones import get_card, resolve_device

    on_gpu = resolve_device(settings.device).type == "cuda"
    return "fp16" if on_gpu and get_card(model).family == "open_clip" else "fp32"


def _hashable(options: dict) -> dict:
    """Probe options with JSON lists as tuples (the probe grid hashes option values)."""
    return {method: {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()}
            for method, opts in options.items()}


def dataset_root(settings: Settings, dataset: str) -> Path | None:
    """``DATA_ROOT/<folder>`` of a dataset, or None without ``--data-root``."""
    entry = settings.config["datasets"][dataset]
    return settings.data_root / entry["folder"] if settings.data_root else None


def workspace_of(settings: Settings, plans=()):
    """The recipe as a workspace: its datasets (under ``--data-root``), models, folders and LoRA
    plans. The stages run it through the same library calls as ``embedcyto extract``, ``probe``
    and ``lora``; it is saved beside the report, so the command line can carry on from it
    (``embedcyto --workspace REPORT/embedcyto.toml status``).
    """
    from embedcyto.workspace import DatasetEntry, Workspace

    entries = tuple(
        DatasetEntry(name=name, layout=settings.config["datasets"][name]["adapter"],
                     root=str(dataset_root(settings, name).resolve()
                              if settings.data_root else Path(name).resolve()))
        for name in settings.datasets if name in settings.config["datasets"])
    return Workspace(base=Path.cwd().resolve(), store=str(settings.store.resolve()),
                     results=str(settings.results.resolve()), runs=str(settings.runs.resolve()),
                     report=str(settings.report.resolve()),
                     weights_dir=str(settings.weights_dir) if settings.weights_dir else None,
                     models=tuple(settings.models), datasets=entries, lora=tuple(plans))


def make_smoke_data(settings: Settings) -> None:
    """Generate the smoke datasets (once: a marker file says a folder is complete).

    Raises:
        EmbedcytoError: a dataset folder holds files not generated here (real data is never
            written over).
    """
    from embedcyto.datasets.fixtures import make_fixture

    per_class = settings.config["smoke"]["per_class"]
    for dataset in settings.datasets:
        root = dataset_root(settings, dataset)
        if (root / SMOKE_MARKER).is_file():
            continue
        if root.is_dir() and any(root.iterdir()):
            raise EmbedcytoError(f"--smoke generates its datasets, but {root} already holds "
                                 "files that it did not generate; give --smoke an empty "
                                 "--data-root (or none: it uses SMOKE_DIR/data)")
        adapter = settings.config["datasets"][dataset]["adapter"]
        make_fixture(adapter, root, per_class=int(per_class.get(dataset, 8)), seed=0)
        (root / SMOKE_MARKER).write_text("generated by --smoke\n", encoding="utf-8")


def _missing_datasets(settings: Settings) -> list[str]:
    from embedcyto.datasets.registry import get_adapter

    out = []
    known = settings.config["datasets"]
    for dataset in settings.datasets:
        if dataset not in known:
            out.append(f"dataset {dataset!r} is not in the configuration (known: "
                       f"{', '.join(known)})")
            continue
        root = dataset_root(settings, dataset)
        if root is not None and root.is_dir() and any(root.iterdir()):
            continue
        entry = known[dataset]
        where = f"{root} is missing or empty" if root else "no --data-root given"
        out.append(f"dataset {dataset}: {where}.\n      get it: {entry['get']}\n"
                   f"      licence: {entry['licence']}\n"
                   f"      put it in DATA_ROOT/{entry['folder']}/ so that it holds: "
                   f"{get_adapter(entry['adapter']).layout}")
    return out


def _missing_weights(settings: Settings, models) -> list[str]:
    from embedcyto.workspace.preflight import missing_weights

    return missing_weights(models, settings.weights_dir, allow_download=settings.download,
                           offer_weights_path=False)  # the recipes take no weights path


def check_inputs(settings: Settings, models) -> None:
    """Make smoke data, or check that every dataset and every model's weights are there.

    Raises:
        MissingInputsError: listing everything missing, before any work is done.
    """
    if settings.smoke:
        make_smoke_data(settings)
        return
    missing = _missing_datasets(settings) + _missing_weights(settings, models)
    if missing:
        lines = [(f"{settings.name}: cannot start, {len(missing)} input(s) missing "
                  "(nothing was run):")]
        lines += [f"  {i}. {m}" for i, m in enumerate(missing, 1)]
        lines.append("Downloads and licences: docs/reproduce.md. To try the recipe without "
                     "them: --smoke.")
        raise MissingInputsError("\n".join(lines))


def say(text: str = "") -> None:
    """Progress output of a recipe (stdout, flushed so logs interleave correctly)."""
    print(text, flush=True)


@contextlib.contextmanager
def one_thread(active: bool):
    """Run torch on one thread (restored afterwards) when ``active``.

    Tiny smoke models are dominated by thread start-up and spinning: on a busy 2-core machine a
    forward pass of ``tiny-clip`` took 0.3 s on two threads and 7 ms on one.
    """
    if not active:
        yield
        return
    from embedcyto.backbones.runtime import torch_threads

    with torch_threads(1):
        yield


#: Library parameters a recipe option of another name sets.
_RECIPE_OPTION_OF = {"store_dir": "store", "results_dir": "results", "runs_dir": "runs",
                     "out_dir": "report"}


def recipe_wording(message: str) -> str:
    """A library message with its `name=value` suggestions as the recipes' own options where
    they have one (`weights_dir=` -> --weights-dir WEIGHTS_DIR); others stay as written."""
    from embedcyto.errors import with_options

    actions = {a.dest: a for a in make_parser("recipe", "")._actions if a.option_strings}

    def option_for(name: str, value: str, at: int) -> str | None:
        action = actions.get(_RECIPE_OPTION_OF.get(name, name))
        if action is None:
            return None
        flag = next(o for o in action.option_strings if o.startswith("--"))
        if action.nargs == 0:  # a switch
            return flag if value != "False" else None
        return f"{flag} {value or action.dest.upper()}"

    return with_options(message, option_for)


def run_main(body, argv=None) -> int:
    """Run a recipe body; library errors print as one message (its parameter suggestions as
    the recipes' options where they have one) and exit with status 2."""
    try:
        with one_thread("--smoke" in (sys.argv[1:] if argv is None else argv)):
            body(argv)
    except EmbedcytoError as err:
        print(f"error: {recipe_wording(str(err))}", file=sys.stderr, flush=True)
        return 2
    return 0
