"""The probe methods as data: one row per method, read by the runner, the CLI and the report.

Adding a method means writing one module (a scikit-learn style estimator, or for an episodic
method a batched episode scorer) and adding one :class:`ProbeMethod` row to :data:`PROBE_METHODS`.
Everything else — the runner's dispatch, ``embedcyto probe --methods`` and its help, which methods
need a validation split, which are computed once for every seed, the report's tables, labels and
figure styles — reads this table. Modules are named by dotted path and imported only when a
method runs, so reading the table imports neither scikit-learn nor torch.

The headline metrics every probe row carries (:data:`HEADLINE_METRICS`) are defined here too, with
their display labels, for the same reason: the runner, the CLI table and the report agree on them.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from embedcyto.errors import ProbeError

FULL_DATA = "full-data"
EPISODIC = "episodic"
KINDS = (FULL_DATA, EPISODIC)

#: Metric name -> display label; every probe row holds these in ``metrics`` (fractions in [0, 1]).
HEADLINE_METRICS: Mapping[str, str] = {"accuracy": "accuracy",
                                       "balanced_accuracy": "balanced accuracy",
                                       "macro_f1": "macro-F1"}

#: Few-shot centring choices of SimpleShot (see docs/probes.md): the support set's mean (the
#: field's common protocol and the default) or the mean of the whole unlabelled training split.
CENTRES = ("support", "train")


@dataclass(frozen=True)
class ProbeMethod:
    """One probe method.

    Attributes:
        name: the name used on the command line and in result rows.
        kind: "full-data" (fit on the training split, score the test split) or "episodic"
            (few-shot episodes over ``shots``).
        estimator: ``"module:Class"`` of its scikit-learn style estimator (the array API).
        display_name: how tables and figures name it.
        help: one line for ``embedcyto probe --help``.
        needs_validation: fit takes ``(X, y, X_val, y_val)`` and the store needs a val split.
        deterministic: the result does not depend on the seed (computed once, copied to each
            seed's row with ``"deterministic": true``).
        seeded: the estimator takes ``random_state`` (the task's seed).
        default: part of ``embedcyto probe``'s default method list.
        scorer: episodic methods only: ``"module:function"`` computing squared distances of a
            batch of episodes, laid out ``(n_queries, episodes, classes)`` (see
            :func:`embedcyto.probes.episodes.run_episodes`).
        gram: episodic methods whose prototypes are weighted sums of support rows:
            ``"module:function"`` giving the method's Gram form
            (:mod:`embedcyto.probes.episode_gram`), which scores many runs from one Gram
            matrix of training rows and queries; None: the scorer alone.
        chosen: result-row key -> estimator attribute recorded under ``"chosen"`` (what the
            method selected, e.g. its C or k and the validation scores).
        defaults: options always recorded in the row's ``options`` (so a row says which
            variant made it, and rows of an older default are never taken for new ones).
        choices: option name -> allowed values, checked before any work.
        temperature: episodic methods: default softmax temperature over negative squared
            distances (probabilities only: HiCervix level sums; the argmax ignores it).
        marker, linestyle: matplotlib style of its lines in the report's figures.
        text: needs the class text embeddings of a vision-language model (cached in the
            store before any probe runs, see docs/text.md); stores of image-only models are
            skipped for it with a warning.
    """

    name: str
    kind: str
    estimator: str
    display_name: str
    help: str = ""
    needs_validation: bool = False
    deterministic: bool = False
    seeded: bool = False
    default: bool = False
    scorer: str | None = None
    gram: str | None = None
    chosen: tuple[tuple[str, str], ...] = ()
    defaults: tuple[tuple[str, Any], ...] = ()
    choices: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    temperature: float = 1.0
    marker: str = "o"
    linestyle: str = "-"
    text: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ProbeError(f"probe method {self.name!r}: kind must be one of {KINDS}")
        if (self.kind == EPISODIC) != (self.scorer is not None):
            raise ProbeError(f"probe method {self.name!r}: an episodic method needs a scorer, "
                             "a full-data method none")

    @property
    def episodic(self) -> bool:
        return self.kind == EPISODIC

    def estimator_class(self) -> type:
        """The estimator class (imported now)."""
        return _load(self.estimator)

    def scorer_function(self):
        """The batched episode scorer (imported now)."""
        return _load(self.scorer)

    def gram_function(self):
        """The Gram-form builder (imported now); see :mod:`embedcyto.probes.episode_gram`."""
        return _load(self.gram)

    def resolve_options(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """The recorded defaults overlaid with ``options``, checked against ``choices``."""
        out = {**dict(self.defaults), **dict(options or {})}
        for key, allowed in self.choices:
            if key in out and out[key] not in allowed:
                raise ProbeError(f"{self.name}: {key}={out[key]!r} is not one of "
                                 f"{', '.join(map(str, allowed))}")
        return out


def _load(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


_SELECTED = (("selection", "selection_"), ("val_accuracy", "val_scores_"))

PROBE_METHODS: tuple[ProbeMethod, ...] = (
    ProbeMethod("linear", FULL_DATA, "embedcyto.probes.linear:LinearProbe", "linear probe",
                help="logistic regression, C chosen on val", needs_validation=True,
                deterministic=True, default=True, chosen=(("C", "C_"), *_SELECTED)),
    ProbeMethod("knn", FULL_DATA, "embedcyto.probes.knn:KNNProbe", "kNN",
                help="cosine k nearest neighbours, k chosen on val", needs_validation=True,
                deterministic=True, default=True, chosen=(("k", "k_"), *_SELECTED)),
    ProbeMethod("study_head", FULL_DATA, "embedcyto.probes.torch_head:StudyLinearHead",
                "study head", help="the study's AdamW linear head", seeded=True,
                chosen=(("epochs", "epochs"), ("steps", "n_steps_"))),
    ProbeMethod("simpleshot", EPISODIC, "embedcyto.probes.fewshot:SimpleShot", "SimpleShot",
                help="few-shot nearest centred, L2-normalised class mean", default=True,
                scorer="embedcyto.probes.episodes:simpleshot_distances",
                gram="embedcyto.probes.episode_gram:simpleshot_form",
                defaults=(("centre", "support"),), choices=(("centre", CENTRES),),
                temperature=0.1, marker="s", linestyle="--"),
    ProbeMethod("protonet", EPISODIC, "embedcyto.probes.fewshot:ProtoNet", "ProtoNet",
                help="few-shot nearest raw class mean",
                scorer="embedcyto.probes.episodes:protonet_distances",
                gram="embedcyto.probes.episode_gram:protonet_form",
                marker="^", linestyle="-."),
    ProbeMethod("zeroshot", FULL_DATA, "embedcyto.probes.textprobes:ZeroShot", "zero-shot",
                help="vision-language models: cosine to the class prompts' embeddings",
                deterministic=True, text=True, marker="*", linestyle=":"),
    ProbeMethod("textlinear", EPISODIC, "embedcyto.probes.textprobes:TextLinear",
                "text-init. linear", help="few-shot cosine probe started at the text classifier",
                scorer="embedcyto.probes.text_episodes:textlinear_scorer", text=True,
                marker="D", linestyle="-"),
    ProbeMethod("clap", EPISODIC, "embedcyto.probes.textprobes:CLAP", "CLAP",
                help="textlinear kept near the text classifier (CLAP's class-adaptive penalty)",
                scorer="embedcyto.probes.text_episodes:clap_scorer", text=True,
                marker="d", linestyle="--"),
    ProbeMethod("tipadapter", EPISODIC, "embedcyto.probes.textprobes:TipAdapter",
                "Tip-Adapter", help="zero-shot + support cache; beta, alpha chosen on val",
                needs_validation=True, scorer="embedcyto.probes.text_episodes:tipadapter_scorer",
                text=True, marker="v", linestyle="-"),
    ProbeMethod("tipadapter_f", EPISODIC, "embedcyto.probes.textprobes:TipAdapterF",
                "Tip-Adapter-F", help="Tip-Adapter with trained cache keys; beta, alpha on val",
                needs_validation=True,
                scorer="embedcyto.probes.text_episodes:tipadapter_f_scorer", text=True,
                marker="v", linestyle="--"),
    ProbeMethod("lppp", EPISODIC, "embedcyto.probes.textprobes:LPPP", "LP++",
                help="linear probe + class-wise multiples of the text logits (LP++)",
                scorer="embedcyto.probes.text_episodes:lppp_scorer", text=True,
                marker="P", linestyle="-"),
)


def probe_methods(kind: str | None = None) -> tuple[ProbeMethod, ...]:
    """Every registered method (of one kind), in table order."""
    return tuple(m for m in PROBE_METHODS if kind is None or m.kind == kind)


def method_names(kind: str | None = None) -> tuple[str, ...]:
    """Names of :func:`probe_methods`."""
    return tuple(m.name for m in probe_methods(kind))


def default_methods() -> tuple[str, ...]:
    """The methods ``embedcyto probe`` runs when none are named."""
    return tuple(m.name for m in PROBE_METHODS if m.default)


def get_method(name: str) -> ProbeMethod:
    """The row of one method.

    Raises:
        ProbeError: unknown name (the message lists the known ones).
    """
    for method in PROBE_METHODS:
        if method.name == name:
            return method
    raise ProbeError(f"unknown probe method {name!r}; choose from {', '.join(method_names())}")


def display_name(name: str) -> str:
    """A method's display name; unknown names (e.g. "lora") are shown as they are."""
    for method in PROBE_METHODS:
        if method.name == name:
            return method.display_name
    return name


def non_default_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options of a result row that differ from what its method records by default (what
    names a variant in tables; unknown methods keep all their options)."""
    defaults = {}
    for method in PROBE_METHODS:
        if method.name == name:
            defaults = dict(method.defaults)
    return {k: v for k, v in dict(options or {}).items()
            if k not in defaults or defaults[k] != v}
