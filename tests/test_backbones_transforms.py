"""Preprocessing from the card, precision and device choice."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from embedcyto.backbones import get_card, make_transform, preprocess_spec
from embedcyto.backbones import runtime
from embedcyto.errors import BackboneError


def _wide_image() -> Image.Image:
    """300 x 100: a white band on each side of a black centre square."""
    pixels = np.full((100, 300, 3), 255, dtype=np.uint8)
    pixels[:, 100:200] = 0
    return Image.fromarray(pixels)


@pytest.mark.parametrize("name", ["clip", "vit", "uni", "tiny-vit"])
def test_uniform_image_is_normalised_with_card_mean_and_std(name):
    card = get_card(name)
    value = 200
    image = Image.new("RGB", (321, 257), (value, value, value))
    out = make_transform(card)(image)
    assert out.shape == (3, card.input_size, card.input_size) and out.dtype == torch.float32
    expected = (value / 255 - torch.tensor(card.mean)) / torch.tensor(card.std)
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-3)


def test_shortest_side_crops_the_centre_but_squash_keeps_everything():
    shortest = make_transform(get_card("clip"))(_wide_image())
    squash = make_transform(get_card("vit"))(_wide_image())
    # Centre crop of the wide image sees only the black square; squash keeps the white bands.
    black_clip = (0 - torch.tensor(get_card("clip").mean)) / torch.tensor(get_card("clip").std)
    assert torch.allclose(shortest[:, 20:-20, 20:-20].mean(dim=(1, 2)), black_clip, atol=1e-2)
    assert squash[:, :, :40].mean() > 0.9 and squash[:, :, 100:124].mean() < -0.9


def test_greyscale_and_rgba_images_become_rgb():
    transform = make_transform(get_card("tiny-vit"))
    for mode in ("L", "RGBA", "P"):
        assert transform(Image.new(mode, (80, 70))).shape == (3, 64, 64)


def test_train_transform_is_random_but_seedable():
    transform = make_transform(get_card("tiny-vit"), train=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 90, 3), dtype=np.uint8))
    torch.manual_seed(5)
    first = transform(image)
    torch.manual_seed(5)
    again = transform(image)
    other = transform(image)
    assert first.shape == (3, 64, 64)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_preprocess_spec_is_json_and_describes_the_card():
    card = get_card("vit")
    spec = json.loads(json.dumps(preprocess_spec(card)))
    assert spec["resize"] == "squash" and spec["crop"] == "none"
    assert spec["mean"] == list(card.mean) and spec["interpolation"] == "bilinear"
    assert preprocess_spec(get_card("clip"))["crop"] == "center"
    assert "train_augmentation" in preprocess_spec(card, train=True)


def test_cpuinfo_flags_are_parsed(tmp_path):
    with_units = tmp_path / "a"
    with_units.write_text("processor: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    without = tmp_path / "b"
    without.write_text("processor: 0\nflags\t\t: fpu sse avx2\n")
    assert runtime.cpu_has_bf16_units(with_units)
    assert not runtime.cpu_has_bf16_units(without)
    assert not runtime.cpu_has_bf16_units(tmp_path / "missing")


@pytest.mark.parametrize("units, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_precision_on_cpu_follows_bf16_units(monkeypatch, units, expected):
    monkeypatch.setattr(runtime, "cpu_has_bf16_units", lambda: units)
    assert runtime.resolve_precision("auto", "cpu") == expected


def test_explicit_precisions_and_errors():
    assert runtime.resolve_precision("fp32", "cpu") == torch.float32
    assert runtime.resolve_precision("BF16", "cpu") == torch.bfloat16
    with pytest.raises(BackboneError, match="fp16 is not supported on the CPU") as err:
        runtime.resolve_precision("fp16", "cpu")
    assert "`precision='bf16'`" in str(err.value)  # a parameter, not a CLI flag
    with pytest.raises(BackboneError, match="unknown precision"):
        runtime.resolve_precision("int8", "cpu")


def test_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(BackboneError, match="no CUDA GPU"):
        runtime.resolve_device("cuda")
    with pytest.raises(BackboneError, match="unknown device"):
        runtime.resolve_device("gpu0")


def test_crop_pct_resizes_beyond_the_input_then_crops_the_centre():
    card = get_card("prov-gigapath")  # Resize(256) then CenterCrop(224), as its model card
    assert card.crop_pct == 0.875 and preprocess_spec(card)["resize_to"] == 256
    assert "resize_to" not in preprocess_spec(get_card("uni"))  # unchanged specs stay unchanged
    pixels = np.zeros((256, 256, 3), dtype=np.uint8)
    pixels[:16] = 255  # a white band only the resize-to-256 crop cuts away
    out = make_transform(card)(Image.fromarray(pixels))
    assert out.shape == (3, 224, 224)
    black = (0 - torch.tensor(card.mean)) / torch.tensor(card.std)
    assert torch.allclose(out[:, 0, :].mean(dim=1), black, atol=1e-2)
    wider = make_transform(dataclasses.replace(card, crop_pct=1.0))(Image.fromarray(pixels))
    assert wider[:, 0, :].mean() > 1.0  # without crop_pct the band would be kept
