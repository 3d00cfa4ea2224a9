"""Text towers: exactly open_clip's own ``encode_text`` on random weights, offline tokenizers.

BiomedCLIP's real tokenizer (PubMedBERT's WordPiece vocabulary) cannot exist offline here, so its
code path is tested with a tiny locally built WordPiece tokenizer and BERT config placed where a
user puts the real ones (``<weights_dir>/biomedclip/text/``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from embedcyto.backbones.cards import get_card, list_cards
from embedcyto.backbones.text import (
    TokenizerNotFoundError,
    build_text_tower,
    has_text,
    text_cards,
    text_spec,
)
from embedcyto.backbones.text.build import _char_tokenizer, _open_clip
from embedcyto.errors import BackboneError

TEXTS = ["a Pap smear image of a dyskeratotic squamous cell.", "koilocyte", "x" * 300]


def _save(model, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def _clip_reference(card_name, seed=3):
    open_clip = _open_clip()
    card, spec = get_card(card_name), text_spec(card_name)
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(
        embed_dim=spec.config["embed_dim"], vision_cfg=dict(card.model_kwargs["vision_cfg"]),
        text_cfg=spec.config["text_cfg"], quick_gelu=True,
    )
    with torch.no_grad():
        model.logit_scale.fill_(4.2)
    return model.eval()


def test_tiny_clip_text_tower_equals_open_clip_encode_text(tmp_path):
    model = _clip_reference("tiny-clip")
    path = _save(model, tmp_path / "full.bin")
    tower = build_text_tower("tiny-clip", weights=path)
    tokens = _open_clip().tokenizer.SimpleTokenizer(context_length=32)(TEXTS)
    with torch.no_grad():
        expected = model.encode_text(tokens)
    torch.testing.assert_close(tower.encode(TEXTS), expected, rtol=0, atol=1e-6)
    assert tower.scale == pytest.approx(float(torch.tensor(4.2).exp()))
    assert tower.weights_sha256 and tower.weights_path == path
    # a random tower (the demonstration card's default) is not the saved one: the test can fail
    assert not torch.allclose(build_text_tower("tiny-clip").encode(TEXTS), expected)


def _hf_folder(folder, positions=64):
    from transformers import BertConfig

    tok = _char_tokenizer(32).tokenizer
    tok.save_pretrained(str(folder))
    BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=positions, vocab_size=128
               ).save_pretrained(str(folder))
    return folder


def _custom_reference(folder, embed_dim, seed=5):
    open_clip = _open_clip()
    torch.manual_seed(seed)
    model = open_clip.model.CustomTextCLIP(
        embed_dim=embed_dim,
        vision_cfg={"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
        text_cfg={"hf_model_name": str(folder), "hf_tokenizer_name": str(folder),
                  "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                  "hf_model_pretrained": False, "context_length": 32},
    )
    return model.eval(), open_clip.tokenizer.HFTokenizer(str(folder), context_length=32)


def test_tiny_biomedclip_text_tower_equals_open_clip_hf_encoder(tmp_path):
    model, tokenizer = _custom_reference(_hf_folder(tmp_path / "tok"), embed_dim=32)
    path = _save(model, tmp_path / "full.bin")
    tower = build_text_tower("tiny-biomedclip", weights=path)
    with torch.no_grad():
        expected = model.encode_text(tokenizer(TEXTS))
    torch.testing.assert_close(tower.encode(TEXTS), expected, rtol=0, atol=1e-6)


def test_biomedclip_reads_tokenizer_and_config_from_the_weights_folder(tmp_path):
    """The real card's path: checkpoint and text folder under <weights_dir>/biomedclip/."""
    folder = _hf_folder(tmp_path / "w" / "biomedclip" / "text", positions=256)
    model, tokenizer = _custom_reference(folder, embed_dim=512)
    _save(model, tmp_path / "w" / "biomedclip" / "open_clip_pytorch_model.bin")
    tower = build_text_tower("biomedclip", weights_dir=tmp_path / "w")
    with torch.no_grad():
        expected = model.encode_text(tokenizer(TEXTS[:2], context_length=256))
    torch.testing.assert_close(tower.encode(TEXTS[:2]), expected, rtol=0, atol=1e-6)
    assert tower.tokenizer_id.startswith("hf microsoft/BiomedNLP")


def test_missing_tokenizer_says_where_it_looked_and_how_to_get_it(tmp_path):
    (tmp_path / "biomedclip").mkdir()
    (tmp_path / "biomedclip" / "open_clip_pytorch_model.bin").write_bytes(b"")
    with pytest.raises(TokenizerNotFoundError) as err:
        build_text_tower("biomedclip", weights_dir=tmp_path)
    message = str(err.value)
    assert "HF_HUB_OFFLINE" in message and str(tmp_path / "biomedclip" / "text") in message
    assert "hf download microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract" in message


def test_wrong_checkpoint_is_refused_with_the_keys_named(tmp_path):
    model = _clip_reference("tiny-clip")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("ln_final")}
    torch.save(state, tmp_path / "bad.bin")
    with pytest.raises(BackboneError, match="missing.*ln_final"):
        build_text_tower("tiny-clip", weights=tmp_path / "bad.bin")


def test_every_vision_language_card_has_a_text_tower_of_its_embedding_width():
    for name in text_cards():
        card = get_card(name)
        assert text_spec(name).config["embed_dim"] == card.embed_dim, name
    names = {c.name for c in list_cards()}
    assert {"clip", "clip-l14", "quilt", "quilt-b16", "biomedclip", "plip", "tiny-clip",
            "tiny-biomedclip"} <= set(text_cards()) <= names


def test_image_only_card_has_no_text_tower():
    assert not has_text("uni")
    with pytest.raises(BackboneError, match="no text encoder.*tiny-clip"):
        text_spec("uni")


@pytest.mark.slow
def test_clip_b16_text_tower_builds_at_full_size():
    """The real configuration builds (random weights), 512-wide like the card's images."""
    tower = build_text_tower(dataclasses.replace(get_card("clip")), random_init=True)
    assert tower.encode(TEXTS[:1]).shape == (1, 512)


def _clip_bpe_folder(folder):
    """A character-level CLIP BPE tokenizer (byte alphabet, no merges) and a tiny CLIPConfig."""
    import json

    from transformers import CLIPConfig, CLIPTokenizer
    from open_clip.tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars]
                                        + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    text = {"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77,
            "projection_dim": 512, "bos_token_id": len(vocab) - 2,
            "eos_token_id": len(vocab) - 1, "pad_token_id": len(vocab) - 1}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 32, "patch_size": 16}
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)
    config.save_pretrained(folder)
    return config


def test_plip_text_tower_equals_transformers_get_text_features(tmp_path):
    _open_clip()  # torchvision first
    from transformers import CLIPModel

    from embedcyto.backbones.weights import read_state_dict

    folder = tmp_path / "w" / "plip" / "text"
    config = _clip_bpe_folder(folder)
    torch.manual_seed(7)
    model = CLIPModel(config).eval()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "w" / "plip" / "model.safetensors"))
    assert read_state_dict(tmp_path / "w" / "plip" / "model.safetensors")
    tower = build_text_tower("plip", weights_dir=tmp_path / "w")
    tokens = tower.tokenize(TEXTS[:2])
    with torch.no_grad():
        expected = model.get_text_features(input_ids=tokens)
    expected = getattr(expected, "pooler_output", expected)
    torch.testing.assert_close(tower.encode(TEXTS[:2]), expected, rtol=0, atol=1e-5)
    assert tower.scale == pytest.approx(float(model.logit_scale.detach().exp()))
