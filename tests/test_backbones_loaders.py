"""Loaders: real architectures (random weights), embedding sizes, weight loading, provenance."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch
from safetensors.torch import save_file

from embedcyto.backbones import build_backbone, get_card, list_cards
from embedcyto.backbones.loaders import Backbone
from embedcyto.errors import BackboneError, WeightsNotFoundError

TINY = [c.name for c in list_cards() if c.random]
# Real-size architectures built once per module (random weights); uni2-h is tested depth-reduced
# in test_lora_unfuse.py because the full 681M-parameter model takes ~10 s and 2.7 GB to build.
REAL = ["clip", "vit", "biomedclip", "quilt", "quilt-b16", "uni", "clip-l14"]


def _blocks(backbone: Backbone) -> int:
    encoder = backbone.encoder
    encoder = getattr(encoder, "trunk", encoder)
    if hasattr(encoder, "blocks"):
        return len(encoder.blocks)
    return len(encoder.transformer.resblocks)


def _width(backbone: Backbone) -> int:
    encoder = backbone.encoder
    encoder = getattr(encoder, "trunk", encoder)
    return encoder.embed_dim if hasattr(encoder, "embed_dim") else encoder.transformer.width


@pytest.fixture(scope="module", params=REAL)
def real(request):
    return build_backbone(request.param, random_init=True)


@pytest.mark.slow
def test_real_architectures_match_their_cards(real):
    card = real.card
    images = torch.randn(2, 3, card.input_size, card.input_size)
    with torch.no_grad():
        out = real(images)
    assert out.shape == (2, card.embed_dim)
    assert torch.isfinite(out).all()
    assert _blocks(real) == card.depth
    assert _width(real) == card.width
    assert real.weights_path is None and real.weights_sha256 is None
    assert not any(p.requires_grad for p in real.parameters())


@pytest.mark.parametrize("name", TINY)
def test_tiny_cards_build_without_weights(name):
    backbone = build_backbone(name)
    card = backbone.card
    out = backbone(torch.randn(3, 3, card.input_size, card.input_size))
    assert out.shape == (3, card.embed_dim)
    assert (_blocks(backbone), _width(backbone)) == (card.depth, card.width)


def test_random_weights_are_reproducible_per_seed():
    torch.manual_seed(123)
    before = torch.rand(1)
    a = build_backbone("tiny-clip", seed=1)
    b = build_backbone("tiny-clip", seed=1)
    c = build_backbone("tiny-clip", seed=2)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)  # the global generator was not consumed
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(a(x), b(x))
    assert not torch.allclose(a(x), c(x))


def test_pretrained_card_without_weights_raises_not_found():
    with pytest.raises(WeightsNotFoundError, match="vit"):
        build_backbone("vit")


def test_weights_and_random_init_are_exclusive(tmp_path):
    with pytest.raises(BackboneError, match="not both"):
        build_backbone("tiny-vit", weights=tmp_path, random_init=True)


def _save(state: dict, path) -> None:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


@pytest.mark.parametrize("name", ["tiny-clip", "tiny-biomedclip"])
def test_full_clip_checkpoint_loads_image_tower_only(tmp_path, name):
    """A CLIP-style file holds visual.* and text keys: only the image tower is loaded."""
    source = build_backbone(name, seed=7)
    state = {f"visual.{k}": v for k, v in source.encoder.state_dict().items()}
    state["text.token_embedding.weight"] = torch.zeros(4, 2)
    state["logit_scale"] = torch.ones(())
    path = tmp_path / "open_clip_model.safetensors"
    _save(state, path)
    loaded = build_backbone(name, weights=tmp_path, seed=99)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(loaded(x), source(x))
    assert loaded.weights_path == path
    assert loaded.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_timm_checkpoint_with_classifier_head_and_module_prefix(tmp_path):
    source = build_backbone("tiny-vit", seed=3)
    state = {f"module.{k}": v for k, v in source.encoder.state_dict().items()}
    state["module.head.weight"] = torch.zeros(10, 64)
    state["module.head.bias"] = torch.zeros(10)
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, str(path))
    loaded = build_backbone("tiny-vit", weights=path)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(loaded(x), source(x))


def test_wrong_checkpoint_lists_missing_and_unexpected_keys(tmp_path):
    state = build_backbone("tiny-clip").encoder.state_dict()
    path = tmp_path / "clip.safetensors"
    _save(state, path)
    with pytest.raises(BackboneError) as info:
        build_backbone("tiny-vit", weights=path)
    message = str(info.value)
    assert "missing" in message and "unexpected" in message and "tiny-vit" in message


def test_wrong_shapes_are_named(tmp_path):
    state = dict(build_backbone("tiny-vit").encoder.state_dict())
    state["cls_token"] = torch.zeros(1, 1, 32)
    path = tmp_path / "w.safetensors"
    _save(state, path)
    with pytest.raises(BackboneError, match=r"wrong shape \(cls_token"):
        build_backbone("tiny-vit", weights=path)


def test_bf16_backbone_accepts_float32_images():
    backbone = build_backbone("tiny-vit", dtype=torch.bfloat16)
    out = backbone(torch.randn(2, 3, 64, 64))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 64)


def test_bad_image_shape_is_explained():
    with pytest.raises(BackboneError, match=r"\[B, 3, H, W\]"):
        build_backbone("tiny-vit")(torch.randn(3, 64, 64))


def test_unknown_timm_mlp_layer_is_refused():
    card = get_card("tiny-vit")
    kwargs = dict(card.model_kwargs, mlp_layer="os.system")
    with pytest.raises(BackboneError, match="mlp_layer"):
        build_backbone(dataclasses.replace(card, model_kwargs=kwargs))


def _open_clip():
    from embedcyto._torchvision_compat import ensure_torchvision

    ensure_torchvision()
    import open_clip

    return open_clip


@pytest.mark.slow
def test_full_open_clip_model_checkpoint_gives_encode_image(tmp_path):
    """A whole open_clip CLIP state dict (both towers) loads into the clip card's image tower."""
    open_clip = _open_clip()
    torch.manual_seed(0)
    full = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(full.state_dict(), str(path))
    backbone = build_backbone("clip", weights=path)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), full.encode_image(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_biomedclip_image_path_matches_open_clip_timm_tower(tmp_path):
    """The image-only BiomedCLIP path equals open_clip's own timm tower with BiomedCLIP's config."""
    open_clip = _open_clip()
    from open_clip.model import CLIP

    vision_cfg = {
        "timm_model_name": "vit_base_patch16_224",
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "linear",
        "image_size": 224,
    }
    text_cfg = {"context_length": 8, "vocab_size": 50, "width": 64, "heads": 2, "layers": 1}
    torch.manual_seed(0)
    clip = CLIP(embed_dim=512, vision_cfg=vision_cfg, text_cfg=text_cfg).eval()
    assert isinstance(clip.visual, open_clip.timm_model.TimmModel)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip.state_dict(), str(path))
    backbone = build_backbone("biomedclip", weights=path)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), clip.encode_image(x), rtol=1e-5, atol=1e-5)
