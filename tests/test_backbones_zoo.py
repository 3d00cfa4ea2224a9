"""Every pretrained card, at its real width, block type, registers and pooling.

For each card: the architecture is the one its model card documents; ``encode`` returns the
declared size and equals the model library's own call as the model card uses it; q/v LoRA starts
equal to the frozen model, has 2*L*r*2D parameters and merges exactly; a state dict written in the
published file's layout loads strictly. To stay fast, the models are cut to two blocks (every
block is identical) and fed an 8 x 8 patch grid (a smaller position embedding; the class token,
registers and pooling are unchanged). The full-size builds run under ``-m slow`` in
test_backbones_zoo_full.py (see docs/models.md).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from embedcyto.backbones import build_backbone, get_card, list_cards
from embedcyto.backbones.loaders import load_weights
from embedcyto.backbones.runtime import torch_threads
from embedcyto.errors import BackboneError
from embedcyto.lora.adapters import (
    LoraSettings,
    apply_lora,
    expected_lora_parameters,
    merge_adapter,
    trainable_parameters,
)
from embedcyto.lora.unfuse import SplitQKV, UnfusedMultiheadAttention

ZOO = [c.name for c in list_cards() if not c.random]

# Facts from each model card / config (width, patch, register tokens, SwiGLU MLP), written out
# here independently of the card files, so a card drifting from its model is caught.
DOCUMENTED = {
    "virchow2": (1280, 14, 4, True),
    "h-optimus-0": (1536, 14, 4, True),
    "h-optimus-1": (1536, 14, 4, True),
    "prov-gigapath": (1536, 16, 0, True),
    "uni2-h": (1536, 14, 8, True),
    "uni": (1024, 16, 0, False),
    "vit": (768, 16, 0, False),
    "biomedclip": (768, 16, 0, False),
    "dinobloom-s": (384, 14, 0, False),
    "dinobloom-b": (768, 14, 0, False),
    "dinobloom-l": (1024, 14, 0, False),
    "dinobloom-g": (1536, 14, 0, True),
    "kaiko-vits16": (384, 16, 0, False),
    "kaiko-vits8": (384, 8, 0, False),
    "kaiko-vitb16": (768, 16, 0, False),
    "kaiko-vitb8": (768, 8, 0, False),
    "lunit-vits8": (384, 8, 0, False),
    "vit-hf": (768, 16, 0, False),
    "phikon": (768, 16, 0, False),
    "phikon-v2": (1024, 16, 0, False),
    "midnight": (1536, 14, 0, True),
    "dinov2-b14": (768, 14, 0, False),
    "dinov2-l14": (1024, 14, 0, False),
    "plip": (768, 32, 0, False),
}


def _root(backbone):
    encoder = backbone.encoder
    return getattr(encoder, "weights_root", encoder)


def _wake_layerscale(model: nn.Module) -> None:
    """LayerScale starts at 1e-5 in random models, which would hide a wrong attention or MLP."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("gamma", "lambda1")):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))


def reduced(name: str):
    """Two blocks and an 8 x 8 patch grid (never larger than the card's own input)."""
    card = get_card(name).with_depth(2)
    return card.with_input_size(min(card.input_size, 8 * card.patch_size))


@pytest.fixture(scope="module", params=ZOO)
def cut(request):
    card = reduced(request.param)
    with torch_threads(1):
        backbone = build_backbone(card, random_init=True, seed=1)
    _wake_layerscale(backbone)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, card.input_size, card.input_size, generator=generator)
    with torch.no_grad(), torch_threads(1):
        out = backbone(x)
    return backbone, x, out


def _close(got, want):
    scale = max(want.abs().max().item(), 1.0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5 * scale)


def test_every_pretrained_card_is_tested_against_its_model_card():
    assert set(DOCUMENTED) <= set(ZOO)
    assert len(ZOO) >= 20


def test_card_builds_the_documented_architecture_and_declared_size(cut):
    backbone, x, out = cut
    card = backbone.card
    assert out.shape == (1, card.embed_dim) and torch.isfinite(out).all()
    if card.name not in DOCUMENTED:
        pytest.skip(f"{card.name}: open_clip architecture, checked in test_backbones_cards.py")
    width, patch, registers, swiglu = DOCUMENTED[card.name]
    assert (card.width, card.patch_size, card.registers) == (width, patch, registers)
    root = _root(backbone)
    if card.family == "timm":
        from timm.layers import GluMlp, SwiGLU

        root = getattr(root, "trunk", root)
        assert root.embed_dim == width and len(root.blocks) == 2
        assert root.patch_embed.patch_size == (patch, patch)
        assert root.num_prefix_tokens == 1 + registers
        assert isinstance(root.blocks[0].mlp, (GluMlp, SwiGLU)) == swiglu
    else:
        config = root.config
        assert config.hidden_size == width and config.num_hidden_layers == 2
        assert config.patch_size == patch
        assert bool(getattr(config, "use_swiglu_ffn", False)) == swiglu


def _library_embedding(card, root, x):
    """The embedding as each model card computes it, with the library's own call."""
    if card.family == "transformers":
        out = root(pixel_values=x)
        if card.name == "midnight":  # model card: extract_classification_embedding
            tokens = out.last_hidden_state
            return torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=-1)
        if card.name == "plip":  # CLIPModel.get_image_features
            return out.image_embeds
        if card.name.startswith("dinov2"):
            return out.pooler_output
        return out.last_hidden_state[:, 0]
    if card.name == "virchow2":  # model card: output[:, 0] and output[:, 5:].mean(1)
        tokens = root(x)
        return torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1)
    if card.family == "timm" and card.proj_dim is None:
        return root(x)  # timm's own head: num_classes=0, class-token pooling
    pytest.skip(f"{card.name}: compared with open_clip's encode_image in test_backbones_loaders")


def test_embedding_equals_the_library_call_documented_by_the_model_card(cut):
    backbone, x, out = cut
    with torch.no_grad(), torch_threads(1):
        want = _library_embedding(backbone.card, _root(backbone), x)
    assert want.shape == out.shape
    _close(out, want)


def test_qv_lora_starts_equal_counts_2lr2d_and_merges_exactly(cut):
    backbone, x, out = cut
    card = backbone.card
    with torch_threads(1):
        model = apply_lora(backbone, LoraSettings(rank=2, dropout=0.0)).eval()
        assert trainable_parameters(model) == expected_lora_parameters(card) == 2 * 2 * 2 * 2 * card.width
        if card.family == "transformers":  # separate q/k/v layers are targeted, nothing unfused
            assert not any(isinstance(m, (SplitQKV, UnfusedMultiheadAttention))
                           for m in model.modules())
        with torch.no_grad():
            _close(model(x), out)
            generator = torch.Generator().manual_seed(3)
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(0.05 * torch.randn(param.shape, generator=generator))
            adapted = model(x)
            merged = merge_adapter(model)(x)
    assert (adapted - out).abs().max() > 1e-4  # the adapters do act
    _close(merged, adapted)


def _published_layout(card, root) -> dict:
    """The encoder's weights in the layout of the card's published file."""
    state = {k: v.clone() for k, v in root.state_dict().items()}
    if card.family == "transformers":
        from transformers.core_model_loading import revert_weight_conversion

        state = revert_weight_conversion(root, state)
        if card.name == "vit-hf":  # a ViTForImageClassification file
            state = {f"vit.{k}": v for k, v in state.items()}
    elif card.checkpoint_format == "dinov2":  # DINOv2 training names
        state = {k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")
                 if "mlp.fc" in k and card.name.endswith("-g") else k: v
                 for k, v in state.items()}
        state["mask_token"] = torch.zeros(1, card.width)
    state = {f"{card.checkpoint_prefix}{k}": v for k, v in state.items()}
    for prefix in card.checkpoint_ignore:  # the parts of the file the image encoder ignores
        state[f"{prefix}{'x' if prefix.endswith('.') else ''}"] = torch.zeros(2)
    return state


def _write(state: dict, path, teacher: bool) -> None:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"teacher": state} if teacher else state, str(path))


def test_published_layout_loads_strictly_and_wrong_keys_are_listed(cut, tmp_path):
    backbone, x, out = cut
    card = backbone.card
    state = _published_layout(card, _root(backbone))
    path = tmp_path / card.weights_files[0]
    _write(state, path, teacher=card.checkpoint_format == "dinov2")
    with torch_threads(1):
        loaded = build_backbone(card, weights=path, seed=99)
        with torch.no_grad():
            _close(loaded(x), out)
    assert loaded.weights_path == path and len(loaded.weights_sha256) == 64
    if card.width > 1024:
        return  # the refusal below is the same code for every width; giants skip its cost
    victim = next(k for k in state if "blocks.1." in k or "layer.1." in k or "layers.1." in k)
    del state[victim]
    state[f"{card.checkpoint_prefix}surplus.weight"] = torch.zeros(3)
    _write(state, path, teacher=card.checkpoint_format == "dinov2")
    with pytest.raises(BackboneError) as info, torch_threads(1):
        load_weights(loaded.encoder, card, path)  # what build_backbone does after building
    message = str(info.value)
    assert "missing" in message and "unexpected" in message and "surplus.weight" in message


def test_transformers_cards_support_gradient_checkpointing_under_lora():
    from embedcyto.lora.model import enable_grad_checkpointing

    card = reduced("vit-hf").with_depth(1)
    backbone = build_backbone(card, random_init=True)
    x = torch.randn(2, 3, card.input_size, card.input_size)
    with torch_threads(1):
        plain = apply_lora(backbone, LoraSettings(dropout=0.0)).train()
        checkpointed = apply_lora(backbone, LoraSettings(dropout=0.0)).train()
        checkpointed.load_state_dict(plain.state_dict())  # the same random LoRA A matrices
        assert enable_grad_checkpointing(checkpointed) == "ViTModel"
        grads = []
        for model in (plain, checkpointed):
            model(x).square().sum().backward()
            grads.append([p.grad for n, p in model.named_parameters() if "lora_B" in n])
    assert grads[1] and all(g is not None and g.abs().sum() > 0 for g in grads[1])
    for a, b in zip(*grads):  # same gradients up to float32 rounding of a recomputed forward
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * a.abs().max().item())
