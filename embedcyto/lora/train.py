"""LoRA fine-tuning of one backbone on one dataset: train, evaluate, save a run folder.

The recipe is the study's (after CLIP-LoRA): LoRA rank 2 on the attention q and v projections,
a linear head on the card's embedding, AdamW (weight decay 1e-2), 50 warm-up steps then a cosine
decay to 1e-6, batches of 32 augmented images (random resized crop 0.7-1, horizontal flip),
cross-entropy on the dataset's primary labels, a fixed number of steps. Only the LoRA matrices
and the head train.

Precision: the frozen backbone weights are held in the run's precision (bf16 on CUDA and on CPUs
with bf16 matrix units by default), exactly as extraction holds them, while the trained
parameters (LoRA A and B, the head) stay float32; peft runs the LoRA branch in float32 and adds
it to the bf16 base output. On a 2-core CPU with bf16 units a ViT-B/16 forward and backward pass
ran 1.4x faster this way than under autocast and 2.2x faster than in float32, and it halves
the frozen weights' memory. fp16 (GPUs without bf16) adds loss scaling.

Randomness: the support set / fraction (numpy generators seeded from the seed and the ids), the
head initialisation (a torch generator), the batch order and each image's augmentation (seeds
drawn in advance, see :func:`embedcyto.lora.data.batch_plan`) all derive from ``seed``. LoRA
dropout uses torch's global generator, which is seeded from ``seed`` inside a forked RNG state,
so the caller's global RNG is left as it was.

Under ``torchrun`` (``ranks`` given) every rank trains its slice of each global batch in
``DistributedDataParallel`` and rank 0 alone validates, tests and writes the run folder; the
result equals a single-process run up to floating-point reduction order (see
:mod:`embedcyto.lora.ddp`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedcyto.datasets.records import Dataset
from embedcyto.errors import ImageReadError, LoraError
from embedcyto.lora import runs
from embedcyto.lora.config import LoraRunConfig
from embedcyto.lora.data import (
    AugmentedImages,
    RunRows,
    batch_plan,
    rank_plan,
    select_rows,
)
from embedcyto.lora.labels import has_study25, study25_metrics, training_view
from embedcyto.study25 import RESULT_KEY

if TYPE_CHECKING:
    import torch

    from embedcyto.distributed import Ranks
    from embedcyto.lora.ddp import DataParallel, SingleProcess
    from embedcyto.lora.model import LoraClassifier

    Team = DataParallel | SingleProcess

log = logging.getLogger(__name__)


@dataclass
class LoraResult:
    """What one call of :func:`train_lora` did.

    Attributes:
        run_dir: the finished run folder.
        config: the run's configuration.
        metrics: the content of ``metrics.json``.
        skipped: True when an identical finished run was found and nothing was trained.
        seconds: wall time of the call.
        export: the feature export's result, when features were exported.
    """

    run_dir: Path
    config: LoraRunConfig
    metrics: dict = field(default_factory=dict)
    skipped: bool = False
    seconds: float = 0.0
    export: object = None


def _raise_read_errors(errors: list[str], dataset: Dataset) -> None:
    bad = [e for e in errors if e]
    if bad:
        path, _, reason = bad[0].partition(": ")
        raise ImageReadError(dataset.root / path, f"{reason}; replace the file, or read the "
                             "dataset with `on_bad_image='skip'` to leave it out")


def predict_proba(model: LoraClassifier, dataset: Dataset, rows: np.ndarray, *,
                  device: torch.device, batch_size: int = 64,
                  num_workers: int | None = 0) -> np.ndarray:
    """Class probabilities of ``model`` for ``rows`` (evaluation transform, no augmentation)."""
    import torch

    from embedcyto.extract import ExtractConfig, make_loader

    card = model.encoder.card
    config = ExtractConfig(batch_size=batch_size, num_workers=num_workers, device=str(device),
                           progress=False)
    position = {int(r): i for i, r in enumerate(rows)}
    out = np.zeros((len(rows), model.head.out_features), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch_rows, images, errors in make_loader(dataset, np.asarray(rows), card,
                                                          config, device):
                if any(errors):
                    paths = [dataset.records[int(r)].path + ": " + e
                             for r, e in zip(batch_rows, errors) if e]
                    _raise_read_errors(paths, dataset)
                logits = model(images.to(device, non_blocking=True)).float()
                idx = [position[int(r)] for r in batch_rows]
                out[idx] = torch.softmax(logits, dim=1).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def score(dataset: Dataset, rows: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """Test metrics from one set of predictions.

    ``"test"``: the trained classes, on the rows labelled in them (all rows unless the run
    learned a narrower label space); HiCervix adds ``"levels"``, the official per-level
    accuracies on every test row, and ``"study25"``, the study's flat 25-class accuracy.
    """
    from embedcyto.metrics import classification_metrics, hierarchical_metrics

    labels = np.array([dataset.records[i].label for i in rows], dtype=np.int64)
    keep = labels >= 0
    out: dict[str, Any] = {"test": classification_metrics(
        labels[keep], proba[keep].argmax(axis=1), proba[keep], len(dataset.classes))}
    if dataset.level_names:
        levels = np.array([dataset.records[i].levels for i in rows], dtype=np.int64)
        sizes = {n: len(dataset.label_spaces[n].classes) for n in dataset.level_names
                 if n in dataset.label_spaces}
        out["levels"] = hierarchical_metrics(proba, levels, dataset.level_maps,
                                             dataset.level_names, sizes)
    if has_study25(dataset):
        out[RESULT_KEY] = study25_metrics(dataset, rows, proba)
    return out


class _Validation:
    """Validation accuracy during training, and the best-so-far snapshot when asked for."""

    def __init__(self, model, dataset, rows, device, keep_best: bool, workers):
        self.model, self.dataset, self.rows = model, dataset, rows
        self.device, self.keep_best, self.workers = device, keep_best, workers
        self.best_accuracy, self.best_step, self.best_state, self.last = -1.0, None, None, None

    def __call__(self, step: int) -> float | None:
        from embedcyto.lora.model import trainable_state

        if len(self.rows) == 0:
            return None
        proba = predict_proba(self.model, self.dataset, self.rows, device=self.device,
                              num_workers=self.workers)
        labels = np.array([self.dataset.records[i].label for i in self.rows])
        self.last = float(np.mean(proba.argmax(axis=1) == labels))
        if self.last > self.best_accuracy:
            self.best_accuracy, self.best_step = self.last, step
            if self.keep_best:
                self.best_state = trainable_state(self.model)
        return self.last

    def summary(self) -> dict:
        return {"n": int(len(self.rows)), "final_accuracy": self.last,
                "best_accuracy": None if self.best_step is None else self.best_accuracy,
                "best_step": self.best_step, "restored_best": self.best_state is not None}


def _loader(dataset, rows, card, config: LoraRunConfig, iterations: int, device, team: Team):
    import torch

    from embedcyto.backbones import make_transform
    from embedcyto.backbones.runtime import default_workers

    images = AugmentedImages(dataset, rows, make_transform(card, train=True), card.input_size)
    plan = rank_plan(batch_plan(len(rows), config.batch_size, iterations, config.seed),
                     team.rank, team.world_size)
    workers = default_workers(config.num_workers)
    return torch.utils.data.DataLoader(
        images, batch_sampler=plan, num_workers=workers, pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None, persistent_workers=False)


def _step_loss(net, images, labels, errors, dataset, device, team: Team):
    """This step's loss to back-propagate and the (global) mean loss to log."""
    logits = net(images.to(device, non_blocking=True))
    return team.step_loss(logits, labels.to(device), lambda: _raise_read_errors(errors, dataset))


def _fit(model, dataset, rows: RunRows, config: LoraRunConfig, iterations: int, device, dtype,
         log_path: Path | None, progress: bool, team: Team) -> dict:
    """The training loop; writes one JSON line per step to ``log_path`` (rank 0 only: others
    pass None). ``team`` is this process's part: :class:`embedcyto.lora.ddp.SingleProcess`, or
    a rank's :class:`embedcyto.lora.ddp.DataParallel` under torchrun.
    """
    import torch
    from tqdm.auto import tqdm

    from embedcyto.schedule import lr_multiplier

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(
        iterations, config.lr, config.resolved_warmup(iterations), config.min_lr))
    every = config.resolved_eval_every(iterations)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    validate = _Validation(model, dataset, rows.val, device, config.best_val,
                           config.num_workers if config.num_workers is not None else 0)
    loader = _loader(dataset, rows.train, model.encoder.card, config, iterations, device, team)
    net = team.wrap(model, device)
    losses, start = [], time.perf_counter()
    model.train()
    # Only the image side's dropout sees this rank's slice of the batch; the text side (a
    # --text-lora head) embeds the same prompts on every rank and draws its own masks.
    with _log_writer(log_path) as write, team.global_dropout(model.encoder), tqdm(
            total=iterations, disable=not progress, unit="step", leave=False) as bar:
        for step, (images, labels, errors) in enumerate(loader, start=1):
            lr_now = optimizer.param_groups[0]["lr"]
            loss, value = _step_loss(net, images, labels, errors, dataset, device, team)
            if not np.isfinite(value):
                raise LoraError(f"the training loss became {value} at step {step}; lower `lr=` "
                                "or use `precision='fp32'`")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            entry = {"step": step, "loss": round(value, 6), "lr": lr_now}
            if (every and step % every == 0) or step == iterations:
                entry["val_accuracy"] = team.validate(lambda s=step: validate(s))
            write(entry)
            losses.append(value)
            bar.update(1)
    seconds = time.perf_counter() - start
    if validate.best_state is not None:
        from embedcyto.lora.model import restore_state

        restore_state(model, validate.best_state)
    return {"val": validate.summary(), "train_seconds": round(seconds, 3),
            "train_images_per_second": round(iterations * min(config.batch_size,
                                                              len(rows.train)) / seconds, 2),
            "first_loss": losses[0], "final_loss": losses[-1]}


@contextmanager
def _log_writer(path: Path | None) -> Iterator[Callable[[dict], None]]:
    """``write(entry)``: one flushed JSON line per call, or nothing when ``path`` is None."""
    if path is None:
        yield lambda entry: None
        return
    with path.open("w", encoding="utf-8") as handle:
        def write(entry: dict) -> None:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()

        yield write


def train_lora(dataset: Dataset, config: LoraRunConfig, *,
               runs_dir: str | os.PathLike | None = None,
               split_dir: str | os.PathLike | None = None,
               weights: str | os.PathLike | None = None,
               weights_dir: str | os.PathLike | None = None, random_init: bool = False,
               rerun: bool = False, progress: bool = False,
               ranks: Ranks | None = None,
               prompts_file: str | os.PathLike | None = None) -> LoraResult:
    """Fine-tune ``config.model`` with LoRA on ``dataset`` and write its run folder.

    Args:
        dataset: records with splits assigned, opened like the store's (``open_for_store``).
        config: the run (data amount, seed, LoRA settings, optimisation).
        runs_dir: root of the run folders (default ``./runs``).
        split_dir: where the dataset's ``splits.json`` lives (generated splits only).
        weights, weights_dir, random_init: backbone weights, as for extraction.
        rerun: train again even when an identical finished run exists.
        progress: show a progress bar.
        ranks: this process's :class:`embedcyto.distributed.Ranks` when started by torchrun:
            every rank trains its slice of each batch (:mod:`embedcyto.lora.ddp`), rank 0
            alone validates, tests and writes the run folder, and every rank returns the same
            result. ``config.device`` is this rank's device.
        prompts_file: class phrases and templates of a text head (``config.head == "text"``),
            laid over the prompts shipped for the dataset (:mod:`embedcyto.prompts`).

    Returns:
        The run folder and its metrics; ``skipped`` when an identical run was already done.

    Raises:
        LoraError: impossible request (too many shots, unknown target...), a run with other
            inputs already in the folder, or a failed training (non-finite loss).
    """
    import torch

    from embedcyto.backbones import get_card, resolve_device, resolve_precision
    from embedcyto.backbones.weights import resolve_model_weights
    from embedcyto.datasets.splits import dataset_split_hash
    from embedcyto.lora.ddp import make_team

    start = time.perf_counter()
    card = get_card(config.model)
    if card.name != config.model or dataset.name != config.dataset:
        raise LoraError(f"config names {config.dataset}/{config.model} but the dataset is "
                        f"{dataset.name} and the card {card.name}")
    view = training_view(dataset, config.label_space)
    rows = select_rows(view, config)
    iterations = config.resolved_iterations(len(rows.train))
    if config.best_val and len(rows.val) == 0:
        raise LoraError(f"{dataset.name} has no validation images, so `best_val=True` cannot "
                        "pick a step; drop `best_val=True` or re-split with a validation part "
                        "(`ratios=`)")
    team = make_team(ranks, min(config.batch_size, len(rows.train)))
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    wpath, sha = resolve_model_weights(card, weights, weights_dir, random_init=random_init)
    prompts = None
    if config.head == "text":
        from embedcyto.lora.texthead import run_prompts

        prompts = run_prompts(view, dataset, prompts_file)
    identity = runs.run_identity(dataset, config, card, sha,
                                 dataset_split_hash(dataset, split_dir),
                                 [view.records[i].path for i in rows.train],
                                 prompts.digest() if prompts is not None else None)
    final = runs.run_dir(runs.default_runs_dir(runs_dir), config)
    done = team.from_rank0(lambda: _finished(final, identity, rerun))
    if done is not None:
        return LoraResult(final, config, done, skipped=True, seconds=time.perf_counter() - start)
    stage = runs.Staging(final) if team.is_main else None
    with stage or nullcontext():
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(config.seed)
            metrics = _train_and_test(view, config, card, rows, iterations, device, dtype,
                                      (wpath, sha, weights_dir, prompts), identity,
                                      stage.tmp if stage else None,
                                      progress and team.is_main, team)
        team.from_rank0(lambda: stage.publish())
    return LoraResult(final, config, metrics, seconds=time.perf_counter() - start)


def _finished(final: Path, identity: dict, rerun: bool) -> dict | None:
    """The metrics of an identical finished run at ``final`` (None: train), after removing
    leftovers of killed runs."""
    runs.clean_leftovers(final)
    if runs.check_existing(final, identity, rerun):
        return runs.read_json(final / runs.METRICS_FILE)
    return None


def _train_and_test(dataset, config, card, rows, iterations, device, dtype, inputs, identity,
                    folder: Path | None, progress: bool, team: Team) -> dict:
    """Build, train, test and save everything into ``folder`` (the staging folder).

    ``inputs``: (weights path, its sha256, weights folder, class prompts of a text head).
    Under torchrun every rank builds and trains; rank 0 (whose ``folder`` is the staging
    folder; the others get None) writes the files, tests, and shares the metrics.
    """
    from embedcyto.lora.model import build_run_model, enable_grad_checkpointing

    def build():
        model = build_run_model(card, config, len(dataset.classes), device, dtype, inputs)
        ckpt = enable_grad_checkpointing(model.encoder) if config.grad_checkpointing else None
        return model, ckpt

    model, ckpt = team.together(build)
    if folder is not None:
        info = runs.run_info(dataset, config, card, identity, iterations, device, dtype,
                             inputs[0], model, ckpt)
        info["resolved"]["world_size"] = team.world_size
        if inputs[3] is not None:
            info["prompts"] = {**inputs[3].to_dict(), "sha256": inputs[3].digest()}
            info["text_tokenizer"] = getattr(model.head, "tokenizer_id", None)
        runs.write_json(folder / runs.CONFIG_FILE, info)
    fit = _fit(model, dataset, rows, config, iterations, device, dtype,
               None if folder is None else folder / runs.LOG_FILE, progress, team)

    def finish() -> dict:
        test_start = time.perf_counter()
        proba = predict_proba(model, dataset, rows.test, device=device,
                              num_workers=config.num_workers)
        metrics = score(dataset, rows.test, proba)
        metrics.update(fit, n_train=int(len(rows.train)), n_val=int(len(rows.val)),
                       n_test=int(len(rows.test)), iterations=iterations,
                       test_seconds=round(time.perf_counter() - test_start, 3))
        val_proba = predict_proba(model, dataset, rows.val, device=device,
                                  num_workers=config.num_workers) if len(rows.val) else None
        runs.save_outputs(folder, model, dataset, rows, proba, val_proba)
        runs.write_json(folder / runs.METRICS_FILE, metrics)
        return metrics

    return team.from_rank0(finish)
