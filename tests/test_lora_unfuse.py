"""Unfused attention gives the fused model's output, for every card's architecture."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from embedcyto.backbones import build_backbone, get_card, list_cards
from embedcyto.errors import LoraError
from embedcyto.lora.unfuse import (
    SplitQKV,
    UnfusedMultiheadAttention,
    target_module_names,
    unfuse_attention,
)


def _reduced(name: str, depth: int = 2):
    """The card's architecture with fewer blocks (same widths, heads, MLP, norms)."""
    card = get_card(name)
    kwargs = dict(card.model_kwargs)
    if card.family == "open_clip":
        kwargs["vision_cfg"] = {**dict(kwargs.get("vision_cfg", {})), "layers": depth}
    else:
        kwargs["depth"] = depth
    return dataclasses.replace(card, model_kwargs=kwargs, depth=depth)


# Every card's architecture is checked on a depth-reduced copy (2 blocks: the real widths, heads,
# MLP and norms; every block is identical), which runs in the fast profile. The full-size models
# (ViT-B/16 and ViT-L/16, 12 and 24 blocks) take seconds each to build and run: they are
# marked slow (the full suite, CI). uni2-h is only ever tested reduced (681M parameters).
FULL_SIZE = ["clip", "quilt", "biomedclip", "vit", "uni"]
CASES = [c.name for c in list_cards() if c.random] + [
    f"{name}-reduced" for name in (*FULL_SIZE, "clip-l14", "uni2-h")] + [
    pytest.param(name, marks=pytest.mark.slow) for name in FULL_SIZE]


def _card(case: str):
    return _reduced(case[: -len("-reduced")]) if case.endswith("-reduced") else get_card(case)


def _wake_layerscale(model: nn.Module) -> None:
    """Random UNI-style models start with LayerScale 1e-5, which would hide a wrong attention."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "gamma") and isinstance(module.gamma, nn.Parameter):
                module.gamma.copy_(1.0 + 0.1 * torch.randn(module.gamma.shape, generator=generator))


@pytest.fixture(scope="module", params=CASES)
def fused_and_unfused(request):
    backbone = build_backbone(_card(request.param), random_init=True, seed=1)
    _wake_layerscale(backbone)
    unfused = copy.deepcopy(backbone)
    replaced = unfuse_attention(unfused)
    return backbone, unfused, replaced


def _images(card, n=2):
    generator = torch.Generator().manual_seed(2)
    return torch.randn(n, 3, card.input_size, card.input_size, generator=generator)


def test_unfused_output_equals_fused(fused_and_unfused):
    fused, unfused, replaced = fused_and_unfused
    assert replaced == fused.card.depth
    x = _images(fused.card)
    with torch.no_grad():
        expected, got = fused(x), unfused(x)
    scale = expected.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-5 * max(scale, 1.0))


def test_no_fused_projection_is_left(fused_and_unfused):
    _, unfused, _ = fused_and_unfused
    assert not any(isinstance(m, nn.MultiheadAttention) for m in unfused.modules())
    for module in unfused.modules():
        assert not isinstance(getattr(module, "qkv", None), nn.Linear)
    assert unfuse_attention(unfused) == 0  # idempotent


def test_original_module_tree_is_untouched_when_a_copy_is_unfused(fused_and_unfused):
    fused, _, _ = fused_and_unfused
    assert not any(isinstance(m, (UnfusedMultiheadAttention, SplitQKV)) for m in fused.modules())


@pytest.mark.parametrize("name", ["tiny-clip", "tiny-vit"])
def test_equivalence_test_would_catch_a_wrong_split(name):
    """Swapping q and k in one block must change the output far beyond the tolerance above."""
    backbone = build_backbone(name)
    _wake_layerscale(backbone)
    broken = copy.deepcopy(backbone)
    unfuse_attention(broken)
    kinds = (UnfusedMultiheadAttention, SplitQKV)
    first = next(m for m in broken.modules() if isinstance(m, kinds))
    with torch.no_grad():
        q = first.q_proj.weight.clone()
        first.q_proj.weight.copy_(first.k_proj.weight)
        first.k_proj.weight.copy_(q)
    x = _images(backbone.card)
    with torch.no_grad():
        assert (broken(x) - backbone(x)).abs().max() > 1e-3


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 24])
def test_multihead_attention_equivalence_with_masks(batch_first, kdim):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first, kdim=kdim, vdim=kdim).eval()
    unfused = UnfusedMultiheadAttention.from_mha(mha).eval()
    batch, length, source = 3, 5, 7
    query = torch.randn(batch, length, 32)
    key = torch.randn(batch, source, kdim or 32)
    if not batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    bool_mask = torch.rand(length, source) < 0.3
    bool_mask[:, 0] = False
    padding = torch.rand(batch, source) < 0.3
    padding[:, 0] = False
    masks = [
        {},
        {"attn_mask": bool_mask},
        {"attn_mask": torch.randn(batch * 4, length, source)},
        {"key_padding_mask": padding},
        {"attn_mask": bool_mask, "key_padding_mask": padding},
        {"attn_mask": bool_mask.float() * -1e4, "key_padding_mask": padding.float() * -1e4},
    ]
    for kwargs in masks:
        for need_weights in (False, True):
            want = mha(query, key, key, need_weights=need_weights, **kwargs)
            got = unfused(query, key, key, need_weights=need_weights, **kwargs)
            torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
            if need_weights:
                torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
            else:
                assert got[1] is None and want[1] is None


def test_unbatched_input_and_per_head_weights():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 2).eval()
    unfused = UnfusedMultiheadAttention.from_mha(mha).eval()
    x = torch.randn(6, 16)
    want, got = mha(x, x, x), unfused(x, x, x)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    per_head = unfused(x, x, x, average_attn_weights=False)[1]
    assert per_head.shape == (2, 6, 6)


def test_unsupported_attention_is_refused():
    with pytest.raises(LoraError, match="add_bias_kv"):
        UnfusedMultiheadAttention.from_mha(nn.MultiheadAttention(8, 2, add_bias_kv=True))


def test_target_names_are_uniform_across_families():
    clip = build_backbone("tiny-clip")
    vit = build_backbone("tiny-vit")
    for model in (clip, vit):
        unfuse_attention(model)
    clip_names = target_module_names(clip, ("q", "v", "o"))
    vit_names = target_module_names(vit, ("q", "v", "o"))
    assert clip_names[:3] == [
        "encoder.transformer.resblocks.0.attn.q_proj",
        "encoder.transformer.resblocks.0.attn.v_proj",
        "encoder.transformer.resblocks.0.attn.out_proj",
    ]
    assert vit_names[:3] == [
        "encoder.blocks.0.attn.qkv.q_proj",
        "encoder.blocks.0.attn.qkv.v_proj",
        "encoder.blocks.0.attn.proj",
    ]
    assert len(clip_names) == len(vit_names) == 2 * 3
    for model, names in ((clip, clip_names), (vit, vit_names)):
        assert all(isinstance(model.get_submodule(name), nn.Linear) for name in names)


def test_target_names_need_an_unfused_model_and_known_targets():
    with pytest.raises(LoraError, match="unfuse_attention"):
        target_module_names(build_backbone("tiny-vit"), ("q",))
    with pytest.raises(LoraError, match="valid targets: q, k, v, o"):
        target_module_names(build_backbone("tiny-vit"), ("query",))


def test_transformers_attention_is_targeted_without_unfusing():
    """transformers ViT/DINOv2/CLIP already own separate q, k, v and output layers."""
    for name, out in (("vit-hf", "o_proj"), ("phikon-v2", "o_proj"), ("plip", "out_proj")):
        card = get_card(name).with_depth(1)
        backbone = build_backbone(card.with_input_size(4 * card.patch_size), random_init=True)
        assert unfuse_attention(backbone) == 0
        names = target_module_names(backbone, ("q", "k", "v", "o"))
        assert len(names) == 4 and names[0].endswith("q_proj") and names[3].endswith(out)
        assert all(isinstance(backbone.get_submodule(n), nn.Linear) for n in names)
