"""peft LoRA on unfused attention: start equal, train only LoRA, merge, save and load."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from embedcyto.backbones import build_backbone
from embedcyto.errors import LoraError
from embedcyto.lora.adapters import (
    LoraSettings,
    apply_lora,
    expected_lora_parameters,
    load_adapter,
    merge_adapter,
    read_adapter_info,
    save_adapter,
    trainable_parameters,
)
from embedcyto.lora.unfuse import SplitQKV, UnfusedMultiheadAttention, unfuse_attention

TINY = ["tiny-clip", "tiny-vit", "tiny-biomedclip"]


def _images(backbone, n=3, seed=0):
    size = backbone.card.input_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _randomise_lora_b(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))


@pytest.fixture(params=TINY)
def backbone(request):
    return build_backbone(request.param, seed=4)


def test_settings_defaults_are_the_study_setting_and_round_trip():
    settings = LoraSettings()
    assert (settings.rank, settings.alpha, settings.dropout) == (2, 1.0, 0.25)
    assert settings.targets == ("q", "v") and settings.rslora
    assert settings.scaling == pytest.approx(1 / math.sqrt(2))
    other = LoraSettings(rank=16, targets=["q", "k", "v", "o"], rslora=False)
    assert LoraSettings.from_json(other.to_json()) == other
    assert other.scaling == pytest.approx(1 / 16)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"targets": ("q", "query")}, "valid targets: q, k, v, o"),
        ({"targets": ()}, "valid targets"),
        ({"targets": ("q", "q")}, "repeat"),
        ({"rank": 0}, "rank"),
        ({"dropout": 1.0}, "dropout"),
        ({"alpha": 0}, "alpha"),
    ],
)
def test_bad_settings_are_refused(kwargs, fragment):
    with pytest.raises(LoraError, match=fragment):
        LoraSettings(**kwargs)


def test_unknown_setting_key_is_refused():
    with pytest.raises(LoraError, match="unknown LoRA setting"):
        LoraSettings.from_dict({"rank": 2, "ranks": 3})


def test_lora_at_init_equals_the_frozen_model(backbone):
    model = apply_lora(backbone, LoraSettings())
    model.eval()
    unfused = _unfused(backbone)
    x = _images(backbone)
    with torch.no_grad():
        assert torch.equal(model(x), unfused(x))  # exactly: B starts at zero
        # open_clip's fused attention kernel rounds differently from the unfused one.
        torch.testing.assert_close(model(x), backbone(x), rtol=1e-5, atol=1e-5)


def _unfused(backbone):
    model = copy.deepcopy(backbone)
    unfuse_attention(model)
    return model


def test_backbone_is_not_edited(backbone):
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = apply_lora(backbone)
    _randomise_lora_b(model)
    assert not any(isinstance(m, (UnfusedMultiheadAttention, SplitQKV)) for m in backbone.modules())
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert not any("lora" in n for n, _ in backbone.named_parameters())


def test_only_lora_parameters_train_and_their_count(backbone):
    card = backbone.card
    model = apply_lora(backbone, LoraSettings(rank=2, targets=("q", "v")))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    expected = 2 * card.depth * 2 * (card.width + card.width)
    assert trainable_parameters(model) == expected == expected_lora_parameters(card)
    wide = apply_lora(backbone, LoraSettings(rank=16, targets=("q", "k", "v", "o")))
    assert trainable_parameters(wide) == expected_lora_parameters(card, rank=16, n_targets=4)
    assert expected_lora_parameters(768, 12, 2, 2) == 12 * 2 * 1536 * 2


def test_scaling_and_dropout_reach_peft(backbone):
    model = apply_lora(backbone, LoraSettings(rank=4, alpha=2.0, dropout=0.1))
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 2 * backbone.card.depth
    for layer in layers:
        assert layer.scaling["default"] == pytest.approx(2.0 / math.sqrt(4))
        assert layer.lora_dropout["default"].p == pytest.approx(0.1)


def test_lora_changes_outputs_and_gets_gradients(backbone):
    model = apply_lora(backbone)
    model.train()
    out = model(_images(backbone))
    out.square().mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    _randomise_lora_b(model)
    model.eval()
    with torch.no_grad():
        assert (model(_images(backbone)) - backbone(_images(backbone))).abs().max() > 1e-3


def test_merged_equals_unmerged_and_leaves_the_adapter(backbone):
    model = apply_lora(backbone, LoraSettings(targets=("q", "k", "v", "o")))
    _randomise_lora_b(model)
    model.eval()
    merged = merge_adapter(model)
    x = _images(backbone)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), rtol=1e-4, atol=1e-5)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert any("lora" in n for n, _ in model.named_parameters())


def test_save_then_load_gives_the_same_outputs(backbone, tmp_path):
    model = apply_lora(backbone, LoraSettings(rank=3, targets=("q", "v", "o")))
    _randomise_lora_b(model)
    model.eval()
    save_adapter(model, tmp_path / "adapter")
    info = read_adapter_info(tmp_path / "adapter")
    assert info["card"] == backbone.card.name
    assert info["settings"] == LoraSettings(rank=3, targets=("q", "v", "o"))
    loaded = load_adapter(backbone, tmp_path / "adapter").eval()
    x = _images(backbone)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert trainable_parameters(loaded) == 0
    assert trainable_parameters(load_adapter(backbone, tmp_path / "adapter", trainable=True)) > 0


def test_loading_on_another_model_or_a_wrong_folder_is_refused(tmp_path):
    model = apply_lora(build_backbone("tiny-vit"))
    save_adapter(model, tmp_path / "a")
    with pytest.raises(LoraError, match="trained on model 'tiny-vit'"):
        load_adapter(build_backbone("tiny-biomedclip"), tmp_path / "a")
    with pytest.raises(LoraError, match="not a saved embedcyto adapter"):
        load_adapter(build_backbone("tiny-vit"), tmp_path)


def test_model_without_attention_is_refused():
    with pytest.raises(LoraError, match="no unfused attention"):
        apply_lora(nn.Sequential(nn.Linear(4, 4)))


def test_saved_config_names_only_the_chosen_layers(tmp_path):
    model = apply_lora(build_backbone("tiny-clip"), LoraSettings(targets=("v",)))
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == [
        f"encoder.transformer.resblocks.{i}.attn.v_proj" for i in range(2)
    ]
    assert config["use_rslora"] is True


@pytest.mark.slow
def test_study_setting_on_real_vit_b16_architecture():
    """BiomedCLIP's ViT-B/16, r=2 on q and v: 2 * 12 * 2 * (768 + 768) = 73,728 parameters."""
    backbone = build_backbone("biomedclip", random_init=True)
    model = apply_lora(backbone)
    assert trainable_parameters(model) == 73_728 == expected_lora_parameters(backbone.card)
    model.eval()
    x = _images(backbone, n=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), backbone(x), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lora_on_gpu_in_bf16():
    backbone = build_backbone("tiny-clip", device="cuda", dtype=torch.bfloat16)
    model = apply_lora(backbone)
    x = _images(backbone).cuda()
    with torch.no_grad():
        out = model(x)
    assert out.device.type == "cuda" and out.dtype == torch.bfloat16
    assert all(p.device.type == "cuda" for p in model.parameters())
