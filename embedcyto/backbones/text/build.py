"""Building a text tower and its tokenizer (imports torch and open_clip; see the package doc)."""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path

import torch
from torch import nn

from embedcyto.backbones.cards import Card
from embedcyto.backbones.text import TextSpec, TokenizerNotFoundError, text_folder, text_spec
from embedcyto.backbones.weights import (
    file_sha256,
    hf_cache_dir,
    hub_offline,
    load_strict,
    prepare_state_dict,
    read_state_dict,
    resolve_weights,
)
from embedcyto.errors import BackboneError

log = logging.getLogger(__name__)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
# The character vocabulary of the random-weight cards' tokenizer (see _char_tokenizer).
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
_PUNCT = ".,-'()/:;"


def _open_clip():
    from embedcyto._torchvision_compat import ensure_torchvision

    ensure_torchvision()
    import open_clip

    return open_clip


def open_clip_config(name: str) -> dict:
    config = _open_clip().get_model_config(name)
    if config is None:
        raise BackboneError(f"open_clip has no model config {name!r}")
    return config


class TextTower(nn.Module):
    """A card's text encoder with its tokenizer and the model's logit scale.

    ``encode(texts)`` returns the embeddings open_clip's ``encode_text`` returns (not
    normalised). ``logit_scale`` is the learned temperature, exponentiated (100 for CLIP).
    """

    def __init__(self, spec: TextSpec, text: nn.Module, tokenizer, tokenizer_id: str):
        super().__init__()
        self.spec = spec
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)), requires_grad=False)
        self.tokenizer = tokenizer
        self.tokenizer_id = tokenizer_id
        self.weights_path: Path | None = None
        self.weights_sha256: str | None = None

    @property
    def scale(self) -> float:
        return float(self.logit_scale.detach().exp())

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(list(texts), context_length=self.spec.context_length)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Embeddings of ``texts`` [n, embed_dim], float32, in the order given."""
        out = []
        for start in range(0, len(texts), batch_size):
            out.append(self(self.tokenize(texts[start : start + batch_size])).float())
        return torch.cat(out) if out else torch.zeros(0, int(self.spec.config["embed_dim"]))


def _hf_config(spec: TextSpec, folder: Path | None):
    from transformers import AutoConfig, CONFIG_MAPPING

    if folder is not None and (folder / "config.json").is_file():
        return AutoConfig.from_pretrained(str(folder))
    if spec.hf_config is None:
        raise BackboneError(f"text tower of {spec.card!r}: no Hugging Face config")
    values = dict(spec.hf_config)
    return CONFIG_MAPPING[values.pop("model_type")](**values)


class TransformersText(nn.Module):
    """transformers ``CLIPTextModelWithProjection`` returning ``get_text_features``' output.

    Attribute names match ``CLIPModel`` (``text_model``, ``text_projection``), so a full PLIP
    checkpoint's text keys load directly."""

    def __init__(self, config):
        super().__init__()
        _open_clip()  # makes torchvision importable, which transformers' CLIP module needs
        from transformers import CLIPTextModelWithProjection

        model = CLIPTextModelWithProjection(config)
        self.text_model, self.text_projection = model.text_model, model.text_projection

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = self.text_model(input_ids=tokens).pooler_output
        return self.text_projection(pooled)


def _transformers_config(spec: TextSpec, folder: Path | None):
    from transformers import CLIPConfig, CLIPTextConfig

    if folder is not None and (folder / "config.json").is_file():
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if data.get("model_type") == "clip":
            return CLIPConfig.from_dict(data).text_config
        return CLIPTextConfig.from_dict(data)
    values = {k: v for k, v in (spec.hf_config or {}).items() if k != "model_type"}
    return CLIPTextConfig(**values)


def _build_module(spec: TextSpec, hf_folder: Path | None) -> nn.Module:
    if spec.transformers:
        return TransformersText(_transformers_config(spec, hf_folder))
    open_clip = _open_clip()
    from open_clip.model import _build_text_tower

    cfg = dict(spec.config["text_cfg"])
    if not spec.is_hf:
        return _build_text_tower(spec.config["embed_dim"], cfg, bool(spec.config.get("quick_gelu")))
    from open_clip.hf_model import HFTextEncoder

    del open_clip
    text = HFTextEncoder(
        str(hf_folder or spec.card),
        output_dim=int(spec.config["embed_dim"]),
        config=_hf_config(spec, hf_folder),
        pooler_type=cfg.get("hf_pooler_type"),
        proj_type=cfg.get("hf_proj_type"),
        pretrained=False,
    )
    if cfg.get("hf_pooler_type") != "cls_pooler":
        # open_clip builds the BERT without its pooling layer for every other pooler; the
        # checkpoints hold no pooler weights, so strict loading needs it gone here too.
        text.transformer.pooler = None
    return text


def _char_tokenizer(context_length: int):
    """A small WordPiece tokenizer over letters, digits and punctuation (random-weight cards)."""
    _open_clip()  # transformers needs the torchvision shim when it is the first to load
    from open_clip.tokenizer import HFTokenizer
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_CHARS, *_PUNCT]
    vocab += [f"##{c}" for c in _CHARS]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.txt"
        path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
        hf = BertTokenizerFast(vocab_file=str(path), do_lower_case=True)
        hf.save_pretrained(tmp)
        return HFTokenizer(tmp, context_length=context_length)


def _hf_tokenizer_folder(spec: TextSpec, card: Card, weights_dir) -> Path:
    """Where the tokenizer and config are: the card's text folder, the HF cache, or the hub."""
    looked = []
    folder = text_folder(card, weights_dir)
    if folder is not None and any((folder / f).is_file() for f in _TOKENIZER_FILES):
        return folder
    looked.append(f"text folder: {folder or 'WEIGHTS_DIR/' + card.name + '/text'} "
                  f"{'holds no tokenizer' if folder and folder.is_dir() else 'does not exist'}")
    repo = spec.tokenizer_repo
    if repo:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo, cache_dir=str(hf_cache_dir()),
                                          local_files_only=True))
        except Exception as err:  # noqa: BLE001 - any cache miss is reported below
            looked.append(f"Hugging Face cache {hf_cache_dir()}: no {repo} ({type(err).__name__})")
        if hub_offline():
            looked.append("Hugging Face hub: not tried, HF_HUB_OFFLINE is set")
        else:
            from embedcyto.backbones.weights import hub_unreachable

            why = hub_unreachable()
            if why is None:
                return Path(snapshot_download(repo, cache_dir=str(hf_cache_dir())))
            looked.append(f"Hugging Face hub: not tried, {why}")
    raise TokenizerNotFoundError(_tokenizer_message(card, repo, folder, looked))


def _tokenizer_message(card: Card, repo: str | None, folder: Path | None, looked: list[str]):
    target = folder or Path("WEIGHTS_DIR") / card.name / "text"
    lines = [f"no text tokenizer found for model {card.name!r}. Looked in:"]
    lines += [f"  {i}. {place}" for i, place in enumerate(looked, 1)]
    lines.append("To get it:")
    if repo:
        lines.append(f"  - `hf download {repo} --local-dir {target}` on a connected machine, "
                     f"then pass `weights_dir={target.parent.parent}`")
        lines.append(f"  - or fill the Hugging Face cache there: `hf download {repo}`")
    else:
        lines.append(f"  - put the tokenizer files (tokenizer.json or vocab.txt, with "
                     f"config.json) in {target}")
    return "\n".join(lines)


def _tokenizer(spec: TextSpec, card: Card, weights_dir):
    """(tokenizer, id recorded in provenance, folder holding a Hugging Face config or None)."""
    if spec.tokenizer == "open_clip":
        open_clip = _open_clip()
        tok = open_clip.tokenizer.SimpleTokenizer(context_length=spec.context_length)
        return tok, f"open_clip SimpleTokenizer {open_clip.__version__}", None
    if spec.tokenizer == "hf-chars":
        return _char_tokenizer(spec.context_length), "embedcyto character WordPiece", None
    from open_clip.tokenizer import HFTokenizer

    folder = _hf_tokenizer_folder(spec, card, weights_dir)
    tok = HFTokenizer(str(folder), context_length=spec.context_length)
    files = [folder / f for f in _TOKENIZER_FILES if (folder / f).is_file()]
    return tok, f"hf {spec.tokenizer_repo or folder.name} sha256 {file_sha256(files[0])[:16]}", \
        folder


def text_state_dict(state: dict) -> dict:
    """The text tower's keys of a full open_clip checkpoint, named as in :class:`TextTower`.

    CLIP files keep the text tower at the top level (``token_embedding``, ``transformer``...);
    custom-text models (BiomedCLIP) under ``text.``. ``logit_scale`` is kept; image keys and
    ``logit_bias`` (SigLIP) are dropped.
    """
    state = prepare_state_dict(state)
    out = {}
    for key, value in state.items():
        if key.startswith(("visual.", "vision_model.", "visual_projection.")) \
                or key == "logit_bias":
            continue
        if key == "logit_scale":
            out[key] = value.reshape(())
        else:
            out[key if key.startswith("text.") else f"text.{key}"] = value
    return out


def build_text_tower(card: Card, *, weights=None, weights_dir=None, random_init: bool = False,
                     seed: int = 0) -> TextTower:
    """Build ``card``'s text tower, with the text keys of its checkpoint unless random.

    Raises:
        BackboneError: the card has no text tower, or the checkpoint does not fit it.
        WeightsNotFoundError / TokenizerNotFoundError: what is missing and how to get it.
    """
    spec = text_spec(card)
    path = None
    if not random_init and not (card.random and weights is None):
        path = resolve_weights(card, weights, weights_dir=weights_dir)
    tokenizer, tokenizer_id, folder = _tokenizer(spec, card, weights_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower = TextTower(spec, _build_module(spec, folder), tokenizer, tokenizer_id)
    if path is not None:
        state = text_state_dict(read_state_dict(path))
        expected = tower.state_dict()
        # older transformers saved position ids as a buffer; they are not weights
        state = {k: v for k, v in state.items()
                 if k in expected or not k.endswith("position_ids")}
        load_strict(tower, state, what=f"the text tower of {card.name!r} ({path})")
        tower.weights_path, tower.weights_sha256 = Path(path), file_sha256(path)
    tower.requires_grad_(False)
    return tower.eval()
