"""Model cards: JSON round trip, validation, lookup, agreement with the libraries' configs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from embedcyto.backbones.cards import Card, FrozenDict, get_card, list_cards
from embedcyto.errors import BackboneError

ALL = [c.name for c in list_cards()]
STUDY = {"clip", "clip-l14", "vit", "vit-hf", "biomedclip", "quilt", "uni"}


def _valid(**changes) -> dict:
    data = get_card("tiny-vit").to_dict()
    data.update(changes)
    return data


@pytest.mark.parametrize("name", ALL)
def test_card_round_trips_through_json(name):
    card = get_card(name)
    again = Card.from_json(card.to_json())
    assert again == card
    assert hash(again) == hash(card)
    assert json.loads(card.to_json())["name"] == name


def test_expected_cards_exist_and_study_flags():
    assert STUDY <= set(ALL)
    assert {"quilt-b16", "uni2-h", "tiny-clip", "tiny-vit", "tiny-biomedclip"} <= set(ALL)
    assert {c.name for c in list_cards() if c.study} == STUDY
    assert all(c.description.startswith("RANDOM WEIGHTS") for c in list_cards() if c.random)
    assert all(not c.study for c in list_cards() if c.random)


def test_list_cards_orders_study_first_and_demo_last():
    kinds = [(c.random, not c.study) for c in list_cards()]
    assert kinds == sorted(kinds)


def test_card_is_immutable_including_kwargs():
    card = get_card("uni")
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.embed_dim = 3
    assert isinstance(card.model_kwargs, FrozenDict)
    with pytest.raises(TypeError):
        card.model_kwargs["init_values"] = 1.0  # type: ignore[index]


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"family": "keras"}, "family"),
        ({"mean": [0.5, 0.5]}, "mean and std"),
        ({"std": [0.5, 0.0, 0.5]}, "std values must be positive"),
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"resize": "pad"}, "resize"),
        ({"embed_dim": 0}, "embed_dim"),
        ({"name": "Bad Name"}, "name must be"),
        ({"random": False, "hub_repo": None, "weights_help": ""}, "hub_repo or weights_help"),
        ({"proj_dim": 7}, "proj_dim"),
    ],
)
def test_invalid_cards_are_refused_with_the_reason(changes, fragment):
    with pytest.raises(BackboneError, match=fragment):
        Card.from_dict(_valid(**changes))


def test_unknown_card_field_is_refused():
    with pytest.raises(BackboneError, match="unknown field.*embedding_dim"):
        Card.from_dict(_valid(embedding_dim=3))


def test_unknown_name_suggests_close_matches_and_lists_known():
    with pytest.raises(BackboneError) as info:
        get_card("unii")
    message = str(info.value)
    assert "Did you mean uni" in message
    for name in ALL:
        assert name in message


def test_get_card_reads_a_card_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(_valid(name="my-model")))
    assert get_card(path).name == "my-model"
    assert get_card(str(path)).name == "my-model"
    with pytest.raises(BackboneError, match="does not exist"):
        get_card(tmp_path / "missing.json")


def test_open_clip_cards_agree_with_open_clip_pretrained_registry():
    """The openai cards must use the -quickgelu configs and the hub repo open_clip itself uses."""
    from embedcyto._torchvision_compat import ensure_torchvision

    ensure_torchvision()
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    for card in list_cards():
        if card.family != "open_clip" or card.source is None:
            continue
        config = open_clip.get_model_config(card.source)
        assert config["embed_dim"] == card.embed_dim, card.name
        assert config["vision_cfg"]["width"] == card.width, card.name
        assert config["vision_cfg"]["layers"] == card.depth, card.name
        if card.pretrained == "openai":
            assert card.source.endswith("-quickgelu") and config["quick_gelu"], card.name
            cfg = get_pretrained_cfg(card.source, card.pretrained)
            assert cfg["hf_hub"].rstrip("/") == card.hub_repo, card.name
            assert tuple(cfg["mean"]) == card.mean and tuple(cfg["std"]) == card.std
            assert cfg["interpolation"] == card.interpolation
            assert cfg["resize_mode"] == card.resize


# The first cards' identity as stores made before the zoo recorded it (their full to_dict then).
FIRST_IDENTITY = {
    "uni2-h": {"name": "uni2-h", "family": "timm", "source": "vit_giant_patch14_224",
               "embed_dim": 1536, "width": 1536, "depth": 24, "pooling":
               "class token after the final norm (1536); the 8 register tokens are not used"},
}


def test_identity_of_the_first_cards_is_unchanged_by_documentation():
    """Stores record identity_dict(); adding params, domains and sources keeps it as it was."""
    card = get_card("uni2-h")
    assert card.params and card.domains and card.notes and card.registers == 8
    identity = card.identity_dict()
    first = FIRST_IDENTITY["uni2-h"]
    assert {k: identity[k] for k in first} == first
    assert len(identity) == 24  # the 24 fields the first cards had
    assert not {"params", "domains", "notes", "pool", "patch_size", "registers"} & set(identity)
    described = dataclasses.replace(card, notes="elsewhere", params=1, domains=("natural",))
    assert described.identity_dict() == identity
    assert dataclasses.replace(card, pool="cls+mean").identity_dict() != identity
