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

FAMILIES = ("open_clip", "timm")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
RESIZE_MODES = ("shortest", "squash")
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

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "model_kwargs", _freeze(dict(self.model_kwargs or {})))
        set_(self, "mean", tuple(float(v) for v in self.mean))
        set_(self, "std", tuple(float(v) for v in self.std))
        set_(self, "weights_files", tuple(str(v) for v in self.weights_files))
        self._validate()

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

    def to_dict(self) -> dict:
        """JSON-able dict; ``Card.from_dict(card.to_dict()) == card``."""
        return {f.name: _thaw(getattr(self, f.name)) for f in dataclasses.fields(self)}

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
