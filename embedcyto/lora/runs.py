"""Run folders: where a LoRA run's results live, and how they appear only once finished.

Layout (``runs`` is ``./runs`` unless ``--runs DIR``)::

    runs/lora/<dataset>/<model>/<shots-K | frac-P | all>/seed-S/
        adapter/             peft safetensors + embedcyto_lora.json (save_adapter)
        head.safetensors     the head: the linear layer, or the text head's class vectors
                             and logit scale
        text_adapter/        the text tower's adapter (``--text-lora`` runs only)
        config.json          the run config, the card, hashes of the support set, split, weights
        rows.json            image ids (and labels) of the train / val rows
        metrics.json         test metrics (per level for HiCervix), validation, timings
        predictions.npz      test (and validation) ids, labels and probabilities
                             (format: :mod:`embedcyto.predictions`)
        train_log.jsonl      one line per step: step, loss, lr (and val accuracy when evaluated)
        COMPLETE             written last

Under ``torchrun`` only rank 0 stages, writes and publishes the folder; the other ranks wait.

A run is written into ``.seed-S.tmp-<pid>`` beside its final place and renamed into place only
after ``COMPLETE`` is written, so an interrupted run never leaves a folder that looks finished.
A Python exception removes the temporary folder at once; a killed process leaves it behind, and
the next launch of the same run removes it (after checking that its process is gone).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from embedcyto.configs import what_differs
from embedcyto.errors import LoraError
from embedcyto.fsio import atomic_write_text, fsync_dir, pid_alive
from embedcyto.lora.config import LoraRunConfig
from embedcyto.names import name_problem

#: Run folders live in ``<runs>/lora/``, at ``<dataset>/<model>/<mode>/seed-S`` below it.
RUNS_SUBDIR = "lora"
RUN_GLOB = "*/*/*/seed-*"
COMPLETE = "COMPLETE"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
LOG_FILE = "train_log.jsonl"
HEAD_FILE = "head.safetensors"
ADAPTER_DIR = "adapter"
ROWS_FILE = "rows.json"
PREDICTIONS_FILE = "predictions.npz"
_TMP, _OLD = ".tmp-", ".old-"


def default_runs_dir(runs: str | os.PathLike | None = None) -> Path:
    """The explicit ``runs`` folder, else the workspace's ``runs`` folder, else ``./runs``."""
    from embedcyto.folders import output_folder

    return output_folder("runs", runs)


def run_dir(runs_root: str | os.PathLike, config: LoraRunConfig) -> Path:
    """``runs_root/lora/<dataset>/<model>/<mode>/seed-<seed>``."""
    for kind, name in (("dataset", config.dataset), ("model", config.model)):
        problem = name_problem(name, file_name=True)
        if problem is not None:
            raise LoraError(f"{kind} name {name!r} {problem}; it names a folder of the run")
    return (Path(runs_root) / RUNS_SUBDIR / config.dataset / config.model / config.mode
            / f"seed-{config.seed}")


def is_complete(path: str | os.PathLike) -> bool:
    """True for a published run folder (its ``COMPLETE`` marker exists)."""
    return (Path(path) / COMPLETE).is_file()


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise LoraError(f"cannot read {path}: {err}; run again with `rerun=True` to redo the run") \
            from err


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n")


def read_run_config(path: str | os.PathLike) -> dict:
    """``config.json`` of a finished run.

    Raises:
        LoraError: the folder is not a finished run.
    """
    path = Path(path)
    if not is_complete(path):
        raise LoraError(f"{path} is not a finished LoRA run (no {COMPLETE} marker); run "
                        "`embedcyto lora` to completion first")
    return read_json(path / CONFIG_FILE)


def _settings(identity: dict) -> dict:
    """An identity with the run's settings at the top (``lr``, not ``config.lr``)."""
    return {**identity.get("config", {}), **{k: v for k, v in identity.items() if k != "config"}}


def identity_differences(old: dict, new: dict) -> str:
    """``key: old -> new`` for each setting or input where two run identities differ."""
    return what_differs(_settings(old), _settings(new))


def _current(config: dict) -> dict:
    """A recorded run config as today's :meth:`LoraRunConfig.identity`: settings added since it
    was written take their defaults (which is what the run used), so an older finished run is
    still recognised. A config that no longer reads is compared as written."""
    try:
        return LoraRunConfig.from_dict(config).identity()
    except LoraError:
        return config


def _current_identity(identity: dict) -> dict:
    if not isinstance(identity.get("config"), dict):
        return identity
    return {**identity, "config": _current(identity["config"])}


def conflicts(runs_root: str | os.PathLike, configs: list[LoraRunConfig]) -> list[str]:
    """Finished runs in the folders of ``configs`` made with other settings, one line each
    naming the folder and only what differs (a quick check on the settings alone, made before
    any training; the full identity is checked again when each run starts)."""
    out = []
    for config in configs:
        path = run_dir(runs_root, config)
        if not is_complete(path):
            continue
        old = _current(read_json(path / CONFIG_FILE).get("identity", {}).get("config", {}))
        if old != config.identity():
            out.append(f"{path}: {what_differs(old, config.identity())}")
    return out


def check_existing(path: Path, identity: dict, rerun: bool) -> bool:
    """Whether a finished run with this identity is already at ``path`` (then it is skipped).

    Raises:
        LoraError: something else is there and ``rerun`` is off (the message says what differs).
    """
    if not path.exists() or rerun:
        return False
    if not is_complete(path):
        raise LoraError(f"{path} exists but is not a finished run (no {COMPLETE} marker); "
                        "remove it or pass `rerun=True` to replace it")
    old = _current_identity(read_json(path / CONFIG_FILE).get("identity", {}))
    if old == identity:
        return True
    raise LoraError(f"{path} holds a finished run made with other inputs "
                    f"({identity_differences(old, identity)}); pass `rerun=True` to replace it, or "
                    "`runs_dir=DIR` to keep both")


def clean_leftovers(path: Path) -> list[Path]:
    """Remove temporary folders of this run left by killed processes; returns what was removed.

    Raises:
        LoraError: a live process is writing this run right now.
    """
    removed = []
    if not path.parent.is_dir():
        return removed
    for marker in (_TMP, _OLD):
        for leftover in sorted(path.parent.glob(f".{path.name}{marker}*")):
            suffix = leftover.name.rsplit(marker, 1)[-1]
            pid = int(suffix) if suffix.isdigit() else -1
            # A folder of this very process is a leftover: this process is not running it.
            if pid > 0 and pid != os.getpid() and pid_alive(pid):
                raise LoraError(f"another process (pid {pid}) is running this LoRA run in "
                                f"{leftover}; wait for it to finish or stop it")
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    return removed


class Staging:
    """A temporary run folder that becomes ``final`` only through :meth:`publish`.

    Use as a context manager: leaving it with an exception (including ``KeyboardInterrupt``)
    deletes the temporary folder.
    """

    def __init__(self, final: Path):
        self.final = Path(final)
        self.tmp = self.final.parent / f".{self.final.name}{_TMP}{os.getpid()}"
        self.published = False

    def __enter__(self) -> "Staging":
        self.final.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.published:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def publish(self) -> Path:
        """Make every file durable, write ``COMPLETE``, then rename the folder into place
        (replacing an older run): a folder with ``COMPLETE`` never holds a truncated file."""
        _fsync_tree(self.tmp)
        atomic_write_text(self.tmp / COMPLETE, "finished\n")
        old = None
        if self.final.exists():
            old = self.final.parent / f".{self.final.name}{_OLD}{os.getpid()}"
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        self.published = True
        fsync_dir(self.final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (adapter, head, predictions, JSON files are
    written by libraries that do not fsync)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(folder)


# -- what a run folder holds ------------------------------------------------------------------

def run_identity(dataset, config: LoraRunConfig, card, weights_sha256, split_hash,
                 train_ids, prompts_sha256: str | None = None) -> dict:
    """What decides a run's result; a finished run is reused only when this matches.

    ``train_ids`` are the training images' paths; ``prompts_sha256`` the digest of the class
    prompts of a text head (other prompts, another run). The number of ranks is not part of
    it: a distributed run gives a single process's result.
    """
    train_ids = sorted(train_ids)
    out = {"config": config.identity(), "card": card.identity_dict(),
           "weights_sha256": weights_sha256 or "random-init", "split_hash": split_hash,
           "dataset_fingerprint": dataset.fingerprint(),
           "train_ids_sha256": hashlib.sha256("\n".join(train_ids).encode()).hexdigest()}
    if prompts_sha256 is not None:
        out["prompts_sha256"] = prompts_sha256
    return out


def run_info(dataset, config: LoraRunConfig, card, identity, iterations, device, dtype, wpath,
             model, ckpt_module) -> dict:
    """The content of ``config.json``: settings, identity, what was resolved, parameter counts."""
    from embedcyto.lora.adapters import expected_lora_parameters
    from embedcyto.lora.texthead import expected_text_lora, head_parameters
    from embedcyto.store.provenance import library_versions

    counts = head_parameters(model)
    rank, targets = config.settings.rank, config.settings.targets
    expected = None
    if card.width:
        expected = (expected_lora_parameters(card.width, card.depth, rank, len(targets))
                    + expected_text_lora(model, rank, targets))
    return {
        "config": config.to_dict(), "identity": identity, "card": card.to_dict(),
        "support_ids_sha256": identity["train_ids_sha256"],
        "weights_sha256": identity["weights_sha256"],
        "generated_data": bool(dataset.generated),
        "weights_path": str(wpath) if wpath else None,
        "dataset": {"name": dataset.name, "adapter": dataset.adapter, "root": str(dataset.root),
                    "classes": list(dataset.classes)},
        "resolved": {"iterations": iterations,
                     "warmup": config.resolved_warmup(iterations),
                     "eval_every": config.resolved_eval_every(iterations),
                     "device": str(device), "precision": str(dtype).replace("torch.", ""),
                     "grad_checkpointing_module": ckpt_module},
        "parameters": {**counts, "lora": counts["lora_image"] + counts["lora_text"],
                       "lora_expected": expected},
        "versions": library_versions(),
    }


def save_outputs(folder: Path, model, dataset, rows, proba: np.ndarray,
                 val_proba: np.ndarray | None = None) -> None:
    """Adapter, head, ``rows.json`` and ``predictions.npz`` of a trained and tested run."""
    from safetensors.torch import save_file

    from embedcyto import predictions
    from embedcyto.lora.adapters import save_adapter

    def part(idx):
        return {"ids": [dataset.records[i].path for i in idx],
                "labels": [int(dataset.records[i].label) for i in idx]}

    save_adapter(model.encoder, folder / ADAPTER_DIR)
    head = model.head
    if hasattr(head, "cosine_head"):  # --text-lora: the adapted text side, and its classifier
        from embedcyto.lora.texthead import TEXT_ADAPTER_DIR

        save_adapter(head.text, folder / TEXT_ADAPTER_DIR)
        head = head.cosine_head()
    state = {k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(folder / HEAD_FILE), metadata={"format": "embedcyto-lora-head"})
    write_json(folder / ROWS_FILE, {"train": part(rows.train), "val": part(rows.val),
                                    "n_test": int(len(rows.test))})
    test, val = part(rows.test), part(rows.val)
    levels = None
    if dataset.level_names:
        levels = [dataset.records[i].levels for i in rows.test]
    meta = {"dataset": dataset.name, "level_names": list(dataset.level_names),
            "level_maps": {n: list(m) for n, m in dataset.level_maps.items()},
            "level_classes": {n: list(dataset.label_spaces[n].classes)
                              for n in dataset.level_names if n in dataset.label_spaces}}
    predictions.write_predictions(folder / PREDICTIONS_FILE, predictions.pack(
        test["ids"], test["labels"], proba, dataset.classes, meta, levels=levels,
        val=None if val_proba is None else (val["ids"], val["labels"], val_proba)))
