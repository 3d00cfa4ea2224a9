"""What one LoRA run is: a frozen, validated, JSON round-tripping description.

A run is identified by (dataset, model, amount of training data, seed); everything else is a
setting whose study value is the default. The amount of data is one of:

- ``shots=K``: the few-shot support set, K images per class of the training split, the very
  images the probe stage uses for (dataset, K, seed) (see :mod:`embedcyto.lora.data`);
- ``fraction=P``: P percent of every class of the training and validation splits;
- neither: all of the training split.

``iterations=None`` means the default schedule length (:meth:`LoraRunConfig.resolved_iterations`):
50 + 50*K steps for K shots, as in the study, and ``epochs`` (default :data:`DEFAULT_EPOCHS`)
passes over the training images otherwise. ``warmup=None`` means the study's 50 steps, cut to
half of a shorter run (:func:`embedcyto.schedule.scaled_warmup`).

This module imports no torch: the command line builds and validates every run's config before
any heavy import, so a bad argument is refused at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from embedcyto import configs
from embedcyto.datasets.records import DATASET_CLASSES
from embedcyto.errors import LoraError
from embedcyto.schedule import scaled_warmup

#: Attention projections LoRA can adapt: query, key, value and the output projection.
TARGETS = ("q", "k", "v", "o")
#: Passes over the training images when training on a fraction or on all data.
DEFAULT_EPOCHS = 10
#: Never fewer steps than this by default (the warm-up alone is 50).
MIN_DEFAULT_ITERATIONS = 100
#: Settings that say where and how fast a run executes, not what it learns; a finished run is
#: reused whatever these were.
RUNTIME_KEYS = ("device", "num_workers")
#: Precisions of the frozen backbone (:func:`embedcyto.backbones.runtime.resolve_precision`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "float32", "bfloat16", "float16")
#: Classification heads: the study's trained linear layer, or the cosine classifier made from
#: the model's own prompt-ensembled class text embeddings (CLIP-LoRA's; vision-language cards).
HEADS = ("linear", "text")


def _positive_int(name: str, value, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise LoraError(f"{name} must be an integer >= {low}, got {value!r}")


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _format_fraction(value: float) -> str:
    """``10.0 -> "10"``, ``2.5 -> "2.5"``: short, stable folder and store names."""
    return f"{value:g}"


@dataclass(frozen=True)
class LoraSettings:
    """Where and how big the adapters are.

    Attributes:
        rank: LoRA rank r (>= 1).
        alpha: LoRA alpha; the update is scaled by alpha / sqrt(r) with ``rslora``, else alpha / r.
        dropout: Dropout on the LoRA input, in [0, 1).
        targets: Attention projections to adapt, from ``q``, ``k``, ``v``, ``o`` (output).
        rslora: Use rank-stabilised scaling alpha / sqrt(r), as the study did.
    """

    rank: int = 2
    alpha: float = 1.0
    dropout: float = 0.25
    targets: tuple[str, ...] = ("q", "v")
    rslora: bool = True

    def __post_init__(self):
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        object.__setattr__(self, "targets", targets)
        unknown = [t for t in targets if t not in TARGETS]
        if unknown or not targets:
            raise LoraError(
                f"unknown LoRA target(s) {unknown or targets}; valid targets: {', '.join(TARGETS)}"
            )
        if len(set(targets)) != len(targets):
            raise LoraError(f"LoRA targets repeat: {targets}")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise LoraError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if not _number(self.dropout) or not 0.0 <= float(self.dropout) < 1.0:
            raise LoraError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if not _number(self.alpha) or not float(self.alpha) > 0.0:
            raise LoraError(f"LoRA alpha must be positive, got {self.alpha!r}")

    @property
    def scaling(self) -> float:
        """The factor multiplying B @ A."""
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "LoraSettings":
        return configs.from_dict(cls, data, error=LoraError, what="LoRA setting")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "LoraSettings":
        return configs.from_json(cls, text, error=LoraError, what="LoRA setting")


@dataclass(frozen=True)
class LoraRunConfig:
    """One LoRA fine-tuning run.

    Attributes:
        model: backbone card name.
        dataset: dataset name (names its store folder and its run folder).
        shots: K images per class (the probe stage's support set), or None.
        fraction: percent of each class of train and val, in (0, 100], or None.
        seed: draws the support set / fraction, the head initialisation, the batch order, the
            augmentation and LoRA dropout.
        settings: where the adapters go and how big they are (study: r=2, alpha=1, q and v).
        lr: peak learning rate of AdamW (adapters and head alike).
        weight_decay: AdamW weight decay.
        warmup: linear warm-up steps from 0 to ``lr``; a cosine decay to ``min_lr`` follows.
            None: the study's 50 steps, at most half the run.
        min_lr: learning rate at the last step.
        batch_size: images per step (fewer when the training set is smaller).
        iterations: optimizer steps; None picks the default (see the module docstring).
        epochs: passes over the training images, for the run length when ``iterations`` is
            None; None: 50 + 50*K steps for K shots, else :data:`DEFAULT_EPOCHS` passes (at
            least :data:`MIN_DEFAULT_ITERATIONS` steps).
        label_space: the classes the head learns: ``"classes"`` (the dataset's own; HiCervix:
            the 26 annotated classes, coarse-only cells included) or a label space the dataset
            defines (HiCervix: ``level_1``, ``level_2``, ``level_3``, ``level_3_study25``);
            images without a label in that space are left out of training and validation.
        eval_every: validation accuracy every that many steps (0: only at the end); None picks
            about ten evaluations per run.
        best_val: restore the adapters and head with the best validation accuracy before testing.
        grad_checkpointing: recompute block activations in the backward pass (less memory,
            about a third more compute), through the model library's own switch.
        device: "auto", "cpu", "cuda" or "cuda:N".
        precision: "auto", "fp32", "bf16" or "fp16": dtype of the frozen backbone weights, as
            in extraction (the trained parameters stay float32).
        num_workers: image decoding processes; None picks ``min(4, cpus - 1)``.
        head: ``"linear"`` (the study's ``nn.Linear`` on the embedding, trained) or ``"text"``:
            logits = s * cos(embedding, class text embedding), the class embeddings the
            prompt-ensembled embeddings of the model's own text tower and s its learned logit
            scale, both kept fixed (as CLIP-LoRA does; vision-language cards only).
        text_lora: with ``head="text"``, LoRA on the text tower's attention too (same settings
            as the image side), the class embeddings recomputed from the adapted text tower at
            every step (CLIP-LoRA's default).
    """

    model: str
    dataset: str
    shots: int | None = None
    fraction: float | None = None
    seed: int = 1
    settings: LoraSettings = field(default_factory=LoraSettings)
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup: int | None = None
    min_lr: float = 1e-6
    batch_size: int = 32
    iterations: int | None = None
    epochs: int | None = None
    label_space: str = DATASET_CLASSES
    eval_every: int | None = None
    best_val: bool = False
    grad_checkpointing: bool = False
    device: str = "auto"
    precision: str = "auto"
    num_workers: int | None = None
    head: str = "linear"
    text_lora: bool = False

    def __post_init__(self):
        if isinstance(self.settings, Mapping):
            object.__setattr__(self, "settings", LoraSettings.from_dict(self.settings))
        if not isinstance(self.settings, LoraSettings):
            raise LoraError(f"settings must be LoraSettings, got {type(self.settings).__name__}")
        for name in ("model", "dataset", "label_space"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise LoraError(f"{name} must be a non-empty name, got {value!r}")
        self._check_amount()
        _positive_int("seed", self.seed, allow_zero=True)
        _positive_int("batch_size", self.batch_size)
        for name in ("warmup", "iterations", "epochs"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name), allow_zero=name == "warmup")
        if self.iterations is not None and self.epochs is not None:
            raise LoraError("give either iterations or epochs, not both (`iterations=` or "
                            "`epochs=`)")
        if str(self.precision).strip().lower() not in PRECISIONS:
            raise LoraError(f"unknown precision {self.precision!r}; use one of "
                            f"{', '.join(PRECISIONS)}")
        if self.eval_every is not None:
            _positive_int("eval_every", self.eval_every, allow_zero=True)
        if self.num_workers is not None:
            _positive_int("num_workers", self.num_workers, allow_zero=True)
        self._check_rates()
        self._check_head()

    def _check_head(self) -> None:
        """``head="text"`` needs a card with a text tower; ``text_lora`` needs the text head."""
        if self.head not in HEADS:
            raise LoraError(f"unknown head {self.head!r}; choose `head=` from "
                            f"{', '.join(HEADS)}")
        if not isinstance(self.text_lora, bool):
            raise LoraError(f"text_lora must be true or false, got {self.text_lora!r}")
        if self.text_lora and self.head != "text":
            raise LoraError("`text_lora=True` adapts the text tower that makes the text head: "
                            "add `head=text` (or drop `text_lora=True`)")
        if self.head == "text":
            from embedcyto.backbones.text import has_text, text_cards

            if not has_text(self.model):
                raise LoraError(f"`head=text` needs a vision-language model, and {self.model!r} "
                                f"has no text encoder; models with one: {', '.join(text_cards())}"
                                " (or use `head=linear`)")

    def _check_amount(self) -> None:
        if self.shots is not None and self.fraction is not None:
            raise LoraError("give either shots or fraction, not both (`shots=` or "
                            "`fraction=`)")
        if self.shots is not None:
            _positive_int("shots", self.shots)
        if self.fraction is not None:
            value = self.fraction
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and 0 < value <= 100):
                raise LoraError(f"fraction is a percentage in (0, 100], got {value!r}; "
                                "e.g. `fraction=10` trains on 10% of each class")
            object.__setattr__(self, "fraction", float(value))

    def _check_rates(self) -> None:
        for name in ("lr", "min_lr", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value >= 0):
                raise LoraError(f"{name} must be a finite number >= 0, got {value!r}")
        if not self.lr > 0:
            raise LoraError(f"lr must be positive, got {self.lr!r}")
        if self.min_lr > self.lr:
            raise LoraError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.warmup is not None and self.iterations is not None \
                and self.warmup >= self.iterations:
            raise LoraError(f"warmup ({self.warmup} steps) must be shorter than iterations "
                            f"({self.iterations}); lower `warmup=` or raise `iterations=`")

    # -- names ---------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """``shots-K``, ``frac-P`` or ``all``, followed by ``-texthead`` (text head) or
        ``-textlora`` (text head and text LoRA): names the run folder and the exported
        features, so runs with different heads never share a folder or a store."""
        if self.shots is not None:
            amount = f"shots-{self.shots}"
        elif self.fraction is not None:
            amount = f"frac-{_format_fraction(self.fraction)}"
        else:
            amount = "all"
        if self.head == "text":
            return f"{amount}-textlora" if self.text_lora else f"{amount}-texthead"
        return amount

    @property
    def variant(self) -> str:
        """Model name of the adapted features in the store: ``<card>+lora-<mode>-s<seed>``."""
        return f"{self.model}+lora-{self.mode}-s{self.seed}"

    # -- derived values ------------------------------------------------------------------------

    def resolved_iterations(self, n_train: int) -> int:
        """Steps actually run: ``iterations``, or ``epochs`` passes, or 50 + 50*K (shots), or
        :data:`DEFAULT_EPOCHS` passes (at least :data:`MIN_DEFAULT_ITERATIONS` steps).

        Raises:
            LoraError: an explicit warm-up would not be shorter than the run.
        """
        per_epoch = math.ceil(max(n_train, 1) / self.batch_size)
        if self.iterations is not None:
            steps = self.iterations
        elif self.epochs is not None:
            steps = self.epochs * per_epoch
        elif self.shots is not None:
            steps = 50 + 50 * self.shots
        else:
            steps = max(MIN_DEFAULT_ITERATIONS, DEFAULT_EPOCHS * per_epoch)
        if self.warmup is not None and self.warmup >= steps:
            raise LoraError(f"warmup ({self.warmup} steps) must be shorter than the run's "
                            f"{steps} iterations; lower `warmup=` (or leave it out: the default "
                            "scales with the run) or raise `iterations=`")
        return steps

    def resolved_warmup(self, iterations: int) -> int:
        """Warm-up steps: ``warmup``, or the study's 50 cut to half of a shorter run."""
        return self.warmup if self.warmup is not None else scaled_warmup(iterations)

    def resolved_eval_every(self, iterations: int) -> int:
        """Steps between validation evaluations (0: only at the end)."""
        if self.eval_every is not None:
            return self.eval_every
        return max(1, iterations // 10)

    # -- JSON ----------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["settings"] = self.settings.to_dict()
        return data

    def identity(self) -> dict:
        """What decides the result: every field except :data:`RUNTIME_KEYS`."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_KEYS}

    @classmethod
    def from_dict(cls, data: Mapping) -> "LoraRunConfig":
        return configs.from_dict(cls, data, error=LoraError, what="LoRA run setting")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LoraRunConfig":
        return configs.from_json(cls, text, error=LoraError, what="LoRA run setting")


def default(name: str):
    """The default of a :class:`LoraRunConfig` or :class:`LoraSettings` field: the one place
    the recipe's values are written (the command line shows these)."""
    for cls in (LoraRunConfig, LoraSettings):
        for f in dataclasses.fields(cls):
            if f.name == name:
                if f.default is not dataclasses.MISSING:
                    return f.default
                if f.default_factory is not dataclasses.MISSING:
                    return f.default_factory()
                raise LoraError(f"{cls.__name__}.{name} has no default")
    raise LoraError(f"no LoRA setting named {name!r}")
