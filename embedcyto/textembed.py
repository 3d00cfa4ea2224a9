"""Class text embeddings for a feature store: computed once per (dataset, model), then cached.

The text tower must be the one that made the store's image features: the store records its
weights' SHA-256, and the text tower's checkpoint must have the same digest, or the two
embeddings would not share a space. Random-weight demonstration cards record no weights; their
text tower is random too (its embeddings mean nothing, like their image features).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from embedcyto.errors import BackboneError
from embedcyto.prompts import ClassPrompts, class_prompts
from embedcyto.store.reader import Features
from embedcyto.store.text import (
    PRIMARY,
    TextEmbeddings,
    read_text_embeddings,
    write_text_embeddings,
)

log = logging.getLogger(__name__)
RANDOM = "random-init"  # what extraction records for random weights


def space_prompts(feats: Features, prompts_file=None) -> dict[str, ClassPrompts]:
    """Prompts of the primary classes and of every label space of the store."""
    adapter = str(feats.provenance.get("adapter") or "folder")
    known = [*feats.classes, *(c for cs in feats.label_spaces.values() for c in cs)]
    out = {PRIMARY: class_prompts(adapter, feats.classes, prompts_file, known=known)}
    for space, classes in feats.label_spaces.items():
        if space != PRIMARY:
            out[space] = class_prompts(adapter, classes, prompts_file, known=known)
    return out


def _wanted(space: str, prompts: ClassPrompts, *, tokenizer: str, weights: str, model: str):
    return {"classes": prompts.classes, "phrases": prompts.phrases,
            "templates": prompts.templates, "prompts_sha256": prompts.digest(),
            "tokenizer": tokenizer, "weights_sha256": weights, "model": model}


def embed_prompts(tower, prompts: ClassPrompts) -> tuple[np.ndarray, np.ndarray]:
    """(class embeddings [C, D], per-template [C, T, D]): every sentence L2-normalised, the
    class vector the normalised mean over templates (CLIP's prompt ensembling)."""
    raw = tower.encode(prompts.texts()).double().numpy()
    per = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    per = per.reshape(len(prompts.classes), len(prompts.templates), -1)
    mean = per.mean(axis=1)
    mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    return mean.astype(np.float32), per.astype(np.float32)


def _tower(feats: Features, weights, weights_dir):
    from embedcyto.backbones.cards import get_card
    from embedcyto.backbones.text import build_text_tower

    card = get_card(feats.model)
    stored = feats.provenance.get("weights_sha256")
    if not stored or stored == RANDOM:
        return build_text_tower(card, random_init=True)
    tower = build_text_tower(card, weights=weights, weights_dir=weights_dir)
    if tower.weights_sha256 != stored:
        raise BackboneError(
            f"{feats.path} was extracted with weights sha256 {stored[:12]}..., but the weights "
            f"found for {card.name!r} ({tower.weights_path}) have {tower.weights_sha256[:12]}...; "
            f"put that file in the weights folder (`weights_dir=`, as <folder>/{card.name}/), "
            "since text and image must come from one checkpoint"
        )
    return tower


def ensure_text_embeddings(feats: Features, *, prompts_file: str | Path | None = None,
                           weights=None, weights_dir=None) -> dict[str, TextEmbeddings]:
    """The store's class text embeddings for every label space, computed only when missing or
    stale (prompts, tokenizer or weights changed), and then cached in the store."""
    prompts = space_prompts(feats, prompts_file)
    weights_sha = str(feats.provenance.get("weights_sha256") or RANDOM)
    cached = {space: read_text_embeddings(feats.path, space) for space in prompts}
    tokenizer = next((c.tokenizer for c in cached.values() if c is not None), None)
    if tokenizer is not None and all(
        c is not None and c.matches(_wanted(s, prompts[s], tokenizer=tokenizer,
                                            weights=weights_sha, model=feats.model))
        for s, c in cached.items()
    ):
        return cached
    tower = _tower(feats, weights, weights_dir)
    out = {}
    for space, p in prompts.items():
        emb, per = embed_prompts(tower, p)
        out[space] = TextEmbeddings(
            space=space, embeddings=emb, per_template=per, classes=p.classes,
            phrases=p.phrases, templates=p.templates, prompts_source=p.source,
            prompts_sha256=p.digest(), tokenizer=tower.tokenizer_id, weights_sha256=weights_sha,
            logit_scale=tower.scale, model=feats.model,
        )
    if emb.shape[1] != feats.X.shape[1]:
        raise BackboneError(f"text embeddings have {emb.shape[1]} dimensions, the store's image "
                            f"features {feats.X.shape[1]}: was the store made from another layer?")
    write_text_embeddings(feats.path, list(out.values()))
    log.info("cached class text embeddings of %s in %s", feats.model, feats.path)
    return out


def has_text_tower(model: str) -> bool:
    """Whether ``model`` (a card name) has a text encoder; probes ask here, not the backbones."""
    from embedcyto.backbones.text import has_text

    return has_text(model)
