"""Model cards: everything embedcyto needs to know about a backbone, as data.

A card says which library builds the model (``family``), from what (``source`` and
``model_kwargs``), how images must be prepared (input size, resize mode, interpolation, mean,
std), what comes out (``embed_dim``, ``pooling``), and where the weights live and under which
licence. Cards are JSON files in ``embedcyto/backbones/cards/``; adding a model means adding a
file, never code. This module imports nothing heavy, so listing cards is instant.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from embedcyto.errors import BackboneError

FAMILIES = ("open_clip", "timm", "transformers")
# How the embedding is read off the encoder (see docs/models.md, "What a backbone returns"):
#   cls         the class token after the final norm (and the card's projection, if any)
#   cls+mean    class token concatenated with the mean of the patch tokens (registers skipped)
#   pooler      transformers ``pooler_output``
#   projection  transformers CLIP ``image_embeds`` (class token, post-norm, projected)
POOLS = ("cls", "cls+mean", "pooler", "projection")
DOMAINS = ("pathology", "cytology", "natural", "vision-language")
CHECKPOINT_FORMATS = ("", "dinov2")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
RESIZE_MODES = ("shortest", "squash")
# Fields added after the first cards; omitted from to_dict() while at their default.
_LATER_FIELDS = frozenset(
    {"pool", "patch_size", "registers", "crop_pct", "params", "domains", "checkpoint_ignore",
     "checkpoint_format", "notes"}
)
_ATTENTION = {
    "open_clip": "nn.MultiheadAttention, packed in_proj [3D, D] in q, k, v order + out_proj; "
                 "LoRA unfuses it into attn.q_proj / k_proj / v_proj / out_proj",
    "timm": "fused attn.qkv Linear(D, 3D) + attn.proj; LoRA unfuses qkv into "
            "attn.qkv.q_proj / k_proj / v_proj (timm's head split, norms and proj unchanged)",
    "transformers": "separate q_proj, k_proj, v_proj and o_proj (CLIP: out_proj) Linear layers; "
                    "LoRA targets them directly, nothing is unfused",
}
# Fields that describe a card without changing what it computes (left out of identity_dict()):
# patch size and registers are also implied by the model arguments, which are identity.
_DESCRIPTIVE_FIELDS = frozenset({"params", "domains", "notes", "patch_size", "registers"})
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class FrozenDict(Mapping):
    """A read-only, hashable mapping, so a frozen card cannot be changed through its kwargs."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping | None = None):
        self._data = {str(k): _freeze(v) for k, v in (data or {}).items()}
        self._hash = None

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __hash__(self):
        if self._hash is None:
            self._hash = hash(json.dumps(_thaw(self), sort_keys=True))
        return self._hash

    def __eq__(self, other):
        return isinstance(other, Mapping) and _thaw(self) == _thaw(other)

    def __repr__(self):
        return f"FrozenDict({self._data!r})"

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return (FrozenDict, (_thaw(self),))


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return value if isinstance(value, FrozenDict) else FrozenDict(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """Plain JSON-able copy (dicts and lists) of a frozen value."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Card:
    """One backbone, described completely enough to build, feed and cite it.

    Attributes:
        name: Short id used on the command line and in store file names.
        family: Loader family, ``"open_clip"`` or ``"timm"``.
        source: open_clip model config name or timm model name; ``None`` when ``model_kwargs``
            alone describe the architecture (the tiny demonstration cards).
        pretrained: open_clip pretrained tag the weights correspond to (provenance only).
        model_kwargs: Extra constructor arguments. open_clip: merged into the model config
            (``embed_dim``, ``quick_gelu``, ``vision_cfg``). timm: passed to ``timm.create_model``.
        embed_dim: Width of the embedding the backbone returns.
        input_size: Square input side in pixels.
        mean: Per-channel normalisation mean (RGB, 0-1 scale).
        std: Per-channel normalisation std.
        interpolation: Resize filter, one of ``INTERPOLATIONS``.
        resize: ``"shortest"`` (short side to ``input_size`` then centre crop) or ``"squash"``
            (both sides to ``input_size``, aspect ratio not kept).
        pooling: Human-readable description of how the embedding is pooled.
        license: Licence of the weights.
        gated: Whether the hub asks users to accept terms before downloading.
        hub_repo: Hugging Face hub repository holding the weights.
        weights_files: File names to look for, in order of preference.
        weights_help: How to obtain the weights, shown when they are missing.
        random: True for demonstration cards that always use random weights.
        description: One line for people choosing a model.
        study: Whether the model was used in Dausort et al., ISBI 2025.
        width: Transformer width D (attention projections are D x D).
        depth: Number of transformer blocks L.
        checkpoint_prefix: Key prefix of the image tower inside a full checkpoint
            (``"visual."`` for CLIP-style files); stripped when present.
        proj_dim: For timm trunks followed by a bias-free linear projection (BiomedCLIP's image
            tower), the projection width; ``None`` otherwise.
        pool: How the embedding is pooled, one of ``POOLS`` (the machine-readable side of
            ``pooling``).
        patch_size: Patch side in pixels (token count for cost estimates).
        registers: Register tokens after the class token (skipped by ``cls+mean`` pooling).
        crop_pct: ``resize: shortest`` resizes the short side to ``input_size / crop_pct`` before
            the centre crop (0.875: resize 256, crop 224).
        params: Parameter count of the image encoder as built (checked by the tests).
        domains: Subset of ``DOMAINS``, for ``embedcyto models list --domain``.
        checkpoint_ignore: Key prefixes of the published file that the image encoder does not use
            (text towers, self-distillation heads, a classifier); dropped before strict loading.
        checkpoint_format: ``"dinov2"`` for files in the DINOv2 training layout (``teacher`` dict,
            ``w12``/``w3`` SwiGLU names, ``mask_token``), converted by timm's own filter.
        notes: Where each fact on the card comes from (model card, paper, code).
    """

    name: str
    family: str
    source: str | None
    embed_dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    resize: str
    pooling: str
    license: str
    width: int
    depth: int
    pretrained: str | None = None
    model_kwargs: Mapping = field(default_factory=FrozenDict)
    gated: bool = False
    hub_repo: str | None = None
    weights_files: tuple[str, ...] = ()
    weights_help: str = ""
    random: bool = False
    description: str = ""
    study: bool = False
    checkpoint_prefix: str = ""
    proj_dim: int | None = None
    pool: str = "cls"
    patch_size: int = 16
    registers: int = 0
    crop_pct: float = 1.0
    params: int | None = None
    domains: tuple[str, ...] = ()
    checkpoint_ignore: tuple[str, ...] = ()
    checkpoint_format: str = ""
    notes: str = ""

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "model_kwargs", _freeze(dict(self.model_kwargs or {})))
        set_(self, "mean", tuple(float(v) for v in self.mean))
        set_(self, "std", tuple(float(v) for v in self.std))
        set_(self, "weights_files", tuple(str(v) for v in self.weights_files))
        set_(self, "domains", tuple(str(v) for v in self.domains))
        set_(self, "checkpoint_ignore", tuple(str(v) for v in self.checkpoint_ignore))
        set_(self, "crop_pct", float(self.crop_pct))
        self._validate()
        self._validate_extra()

    def _validate(self) -> None:
        where = f"card {self.name!r}"
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise BackboneError(
                f"{where}: name must be lower-case letters, digits, '.', '_' or '-'"
            )
        if self.family not in FAMILIES:
            raise BackboneError(f"{where}: family {self.family!r} is not one of {FAMILIES}")
        for attr in ("embed_dim", "input_size", "width", "depth"):
            value = getattr(self, attr)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BackboneError(f"{where}: {attr} must be a positive integer, got {value!r}")
        if self.proj_dim is not None and self.proj_dim != self.embed_dim:
            raise BackboneError(f"{where}: proj_dim {self.proj_dim} must equal embed_dim")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise BackboneError(f"{where}: mean and std need exactly 3 values (RGB)")
        if any(s <= 0 for s in self.std):
            raise BackboneError(f"{where}: std values must be positive, got {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise BackboneError(f"{where}: interpolation must be one of {INTERPOLATIONS}")
        if self.resize not in RESIZE_MODES:
            raise BackboneError(f"{where}: resize must be one of {RESIZE_MODES}")
        if self.source is None and not self.model_kwargs:
            raise BackboneError(f"{where}: needs a source or model_kwargs describing the model")
        if not self.random and not (self.hub_repo or self.weights_help):
            raise BackboneError(f"{where}: a pretrained card needs hub_repo or weights_help")

    def _validate_extra(self) -> None:
        where = f"card {self.name!r}"
        if self.pool not in POOLS:
            raise BackboneError(f"{where}: pool must be one of {POOLS}, got {self.pool!r}")
        if self.pool in ("pooler", "projection") and self.family != "transformers":
            raise BackboneError(f"{where}: pool {self.pool!r} exists only for transformers cards")
        unknown = [d for d in self.domains if d not in DOMAINS]
        if unknown:
            raise BackboneError(f"{where}: unknown domain(s) {unknown}; valid: {DOMAINS}")
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise BackboneError(f"{where}: checkpoint_format must be one of {CHECKPOINT_FORMATS}")
        if not 0.5 <= self.crop_pct <= 1.0:
            raise BackboneError(f"{where}: crop_pct must be in [0.5, 1], got {self.crop_pct}")
        for attr in ("patch_size",):
            if not isinstance(getattr(self, attr), int) or getattr(self, attr) < 1:
                raise BackboneError(f"{where}: {attr} must be a positive integer")
        if not isinstance(self.registers, int) or self.registers < 0:
            raise BackboneError(f"{where}: registers must be an integer >= 0")

    @property
    def attention(self) -> str:
        """How the attention is laid out, and so how q/v LoRA reaches it (derived from the family)."""
        return _ATTENTION[self.family]

    @property
    def page(self) -> str | None:
        """The model's page on the Hugging Face hub (where gated licences are accepted)."""
        return f"https://huggingface.co/{self.hub_repo}" if self.hub_repo else None

    def with_depth(self, depth: int) -> "Card":
        """The same card with ``depth`` transformer blocks: same width, heads, MLP, tokens, pooling.

        For tests and quick trials of giant models: every block is identical, so two blocks
        exercise the whole architecture at a fraction of the cost. ``params`` is cleared.
        """
        kwargs = _thaw(self.model_kwargs)
        if self.family == "open_clip":
            # merged into the named open_clip config by the loader, so only the depth changes
            kwargs["vision_cfg"] = {**kwargs.get("vision_cfg", {}), "layers": depth}
        elif self.family == "transformers":
            kwargs["num_hidden_layers"] = depth
        else:
            kwargs["depth"] = depth
        return dataclasses.replace(self, model_kwargs=kwargs, depth=depth, params=None)

    def with_input_size(self, size: int) -> "Card":
        """The same card built for ``size``-pixel inputs (a smaller position-embedding grid).

        Only for tests, which then run every block type on fewer tokens.
        """
        kwargs = _thaw(self.model_kwargs)
        if self.family == "open_clip":
            kwargs["vision_cfg"] = {**kwargs.get("vision_cfg", {}), "image_size": size}
        elif self.family == "transformers":
            kwargs["image_size"] = size
        else:
            kwargs["img_size"] = size
        return dataclasses.replace(self, model_kwargs=kwargs, input_size=size, params=None)

    def to_dict(self) -> dict:
        """JSON-able dict; ``Card.from_dict(card.to_dict()) == card``.

        Fields added after the first cards are left out while at their default, so the
        dict of an unchanged card (which feature stores record as identity) stays the same.
        """
        out = {}
        for f in dataclasses.fields(self):
            value = _thaw(getattr(self, f.name))
            if f.name in _LATER_FIELDS and value == _thaw(f.default):
                continue
            out[f.name] = value
        return out

    def identity_dict(self) -> dict:
        """:meth:`to_dict` without the purely descriptive fields (parameter count, domains,
        sources, patch size, registers), which never change the features: what stores and LoRA runs record as identity,
        so documenting a card better does not make its stores stale."""
        return {k: v for k, v in self.to_dict().items() if k not in _DESCRIPTIVE_FIELDS}

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **{"indent": 2, **kwargs})

    @classmethod
    def from_dict(cls, data: Mapping) -> "Card":
        """Build a card from a dict, refusing keys it does not know (typos must not pass)."""
        from embedcyto.configs import from_dict

        name = data.get("name", "?") if isinstance(data, Mapping) else "?"
        return from_dict(cls, data, error=BackboneError, what="field", where=f"card {name!r}: ")

    @classmethod
    def from_json(cls, text: str) -> "Card":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise BackboneError(f"card JSON is malformed: {err}") from err
        if not isinstance(data, dict):
            raise BackboneError("card JSON must be an object")
        return cls.from_dict(data)


def _card_files() -> dict[str, Any]:
    folder = resources.files("embedcyto.backbones") / "cards"
    return {p.name[: -len(".json")]: p for p in folder.iterdir() if p.name.endswith(".json")}


def list_cards() -> list[Card]:
    """All built-in cards, sorted: study models first, then the others, demo cards last."""
    cards = [Card.from_json(p.read_text(encoding="utf-8")) for p in _card_files().values()]
    return sorted(cards, key=lambda c: (c.random, not c.study, c.name))


def get_card(name: str | Path) -> Card:
    """The card called ``name``, or the card in the JSON file at path ``name``.

    Raises:
        BackboneError: unknown name; the message lists the known cards and close matches.
    """
    if isinstance(name, Path) or str(name).endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise BackboneError(f"card file {path} does not exist")
        return Card.from_json(path.read_text(encoding="utf-8"))
    files = _card_files()
    if name in files:
        card = Card.from_json(files[name].read_text(encoding="utf-8"))
        if card.name != name:
            raise BackboneError(f"card file {name}.json names itself {card.name!r}")
        return card
    close = difflib.get_close_matches(str(name), list(files), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise BackboneError(
        f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(files))} "
        "(see `embedcyto models list`), or pass a path to a card .json file."
    )
