"""Every pretrained card at full size: depth, input size and parameter count (random weights).

Off by default (0.6-1.1B-parameter models take tens of seconds and several GB each on a CPU);
run with

    .venv/bin/python -m pytest -m giant tests/test_backbones_zoo_full.py

benchmarks/gpu_check.sh runs it on a GPU when one is at hand (the models then go to CUDA).
"""

from __future__ import annotations

import pytest
import torch

from embedcyto.backbones import build_backbone, get_card, list_cards
from tests.test_backbones_zoo import _close, _library_embedding, _root

FULL = [c.name for c in list_cards() if not c.random]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.giant
@pytest.mark.parametrize("name", FULL)
def test_full_size_card_builds_counts_and_matches_the_library_call(name):
    card = get_card(name)
    backbone = build_backbone(card, random_init=True, device=DEVICE)
    assert sum(p.numel() for p in backbone.parameters()) == card.params
    x = torch.randn(2, 3, card.input_size, card.input_size, device=DEVICE)
    with torch.no_grad():
        out = backbone(x)
        assert out.shape == (2, card.embed_dim) and torch.isfinite(out).all()
        try:
            want = _library_embedding(card, _root(backbone), x)
        except pytest.skip.Exception:
            return  # open_clip cards: compared with encode_image in test_backbones_loaders
    _close(out, want)
