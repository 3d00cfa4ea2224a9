"""Weights resolution order, the not-found message, hashing and safe checkpoint reading."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from safetensors.torch import save_file

from embedcyto.backbones import weights as W
from embedcyto.backbones.cards import get_card
from embedcyto.errors import BackboneError, WeightsNotFoundError


def _tensor_file(path, value=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.full((2, 2), value)}, str(path))
    return path


def _fake_hf_cache(cache, repo, filename, commit="a" * 40):
    """The folder layout huggingface_hub writes: refs/main -> snapshots/<commit>/<file>."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return _tensor_file(root / "snapshots" / commit / filename)


def test_explicit_file_and_folder(tmp_path):
    card = get_card("uni")
    file = _tensor_file(tmp_path / "x" / "anything.pth")
    assert W.resolve_weights(card, file) == file
    assert W.resolve_weights(card, file.parent) == file


def test_explicit_folder_with_several_files_names_them(tmp_path):
    _tensor_file(tmp_path / "a.safetensors")
    _tensor_file(tmp_path / "b.bin")
    with pytest.raises(BackboneError, match=r"a\.safetensors, b\.bin"):
        W.resolve_weights(get_card("uni"), tmp_path)


def test_explicit_folder_without_weights_lists_contents(tmp_path):
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(BackboneError, match="no weights file.*README.md"):
        W.resolve_weights(get_card("uni"), tmp_path)


def test_explicit_missing_path_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))  # a cache of this test's own
    _fake_hf_cache(W.hf_cache_dir(), "MahmoodLab/UNI", "pytorch_model.bin")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        W.resolve_weights(get_card("uni"), tmp_path / "nope.bin")


def test_weights_dir_prefers_the_card_file_names(tmp_path):
    card = get_card("clip")
    folder = tmp_path / "clip"
    _tensor_file(folder / "model.safetensors")  # timm-format file of the same hub repo
    wanted = _tensor_file(folder / "open_clip_model.safetensors")
    assert W.resolve_weights(card, weights_dir=tmp_path) == wanted


def test_weights_dir_from_environment_is_read_at_call_time(tmp_path, monkeypatch):
    card = get_card("uni")
    file = _tensor_file(tmp_path / "uni" / "pytorch_model.bin")
    with pytest.raises(WeightsNotFoundError):
        W.resolve_weights(card)
    monkeypatch.setenv("EMBEDCYTO_WEIGHTS", str(tmp_path))
    assert W.resolve_weights(card) == file


def test_hugging_face_cache_is_used_under_hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    card = get_card("biomedclip")
    cached = _fake_hf_cache(tmp_path / "home" / "hub", card.hub_repo, "open_clip_pytorch_model.bin")
    assert W.resolve_weights(card) == cached


def test_not_found_message_lists_places_and_commands(tmp_path):
    card = get_card("uni")
    with pytest.raises(WeightsNotFoundError) as info:
        W.resolve_weights(card, weights_dir=tmp_path)
    message = str(info.value)
    assert "'uni'" in message
    assert str(tmp_path / "uni") in message
    assert str(W.hf_cache_dir()) in message
    assert "HF_HUB_OFFLINE" in message
    assert "https://huggingface.co/MahmoodLab/UNI" in message
    assert "hf auth login" in message
    assert f"hf download MahmoodLab/UNI pytorch_model.bin --local-dir {tmp_path / 'uni'}" in message
    assert "`weights=PATH`" in message and f"`weights_dir={tmp_path}`" in message
    assert "--weights" not in message  # the library names parameters; the CLI says its flags


def test_the_not_found_message_names_the_flags_on_the_command_line(tmp_path):
    from click.testing import CliRunner

    from embedcyto.cli.main import cli

    result = CliRunner().invoke(cli, ["models", "show", "uni", "--weights-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "1. --weights PATH (not given)" in result.output
    assert f"then pass --weights-dir {tmp_path}" in result.output
    assert "or pass --weights PATH (a weights file" in result.output
    assert "`weights" not in result.output


def test_ungated_message_does_not_ask_for_a_licence(tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        W.resolve_weights(get_card("vit"), weights_dir=tmp_path)
    assert "hf auth login" not in str(info.value)
    assert "hf download timm/vit_base_patch16_224.orig_in21k_ft_in1k" in str(info.value)


def test_hub_is_tried_only_when_online(tmp_path, monkeypatch):
    card = get_card("vit")
    calls = []

    def fake_download(repo, filename, cache_dir):
        calls.append((repo, filename))
        return str(_tensor_file(tmp_path / "dl" / filename))

    monkeypatch.setattr(W, "_hub_download", fake_download)
    monkeypatch.setattr(W, "hub_unreachable", lambda timeout=3.0: None)
    with pytest.raises(WeightsNotFoundError):
        W.resolve_weights(card)
    assert calls == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(WeightsNotFoundError):
        W.resolve_weights(card, allow_download=False)
    assert calls == []
    assert W.resolve_weights(card) == tmp_path / "dl" / "model.safetensors"
    assert calls == [(card.hub_repo, "model.safetensors")]


def test_hub_failures_are_reported_per_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def failing(repo, filename, cache_dir):
        raise OSError(f"no route to host for {filename}")

    monkeypatch.setattr(W, "_hub_download", failing)
    monkeypatch.setattr(W, "hub_unreachable", lambda timeout=3.0: None)
    with pytest.raises(WeightsNotFoundError, match="no route to host for pytorch_model.bin"):
        W.resolve_weights(get_card("uni"))


def test_an_unreachable_hub_is_reported_without_trying_downloads(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    calls = []
    monkeypatch.setattr(W, "_hub_download", lambda *a: calls.append(a))
    with pytest.raises(WeightsNotFoundError, match="not tried, 127.0.0.1:9 cannot be reached"):
        W.resolve_weights(get_card("uni"))
    assert calls == []


def test_a_proxy_leaves_the_decision_to_the_hub_client(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert W.hub_unreachable() is None


def test_random_cards_have_no_weights_to_find():
    with pytest.raises(WeightsNotFoundError, match="random-weight"):
        W.resolve_weights(get_card("tiny-vit"))


def test_sha256_is_streamed_and_correct(tmp_path):
    path = tmp_path / "blob.bin"
    data = os.urandom((1 << 22) + 123)  # spans more than one read chunk
    path.write_bytes(data)
    assert W.file_sha256(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1])  # a changed file is hashed again, not served from memory
    assert W.file_sha256(path) == hashlib.sha256(data[:-1]).hexdigest()


def test_read_state_dict_unwraps_and_strips_prefixes(tmp_path):
    path = tmp_path / "ckpt.pt"
    state = {"module.visual.a": torch.ones(1), "module.text.b": torch.zeros(1)}
    torch.save({"state_dict": state, "epoch": 3}, str(path))
    read = W.read_state_dict(path)
    assert set(read) == set(state)
    assert set(W.prepare_state_dict(read, "visual.")) == {"a"}
    assert set(W.prepare_state_dict({"a": torch.ones(1)}, "visual.")) == {"a"}


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.bin"
    torch.save({"w": torch.ones(1), "obj": object()}, str(path))
    with pytest.raises(BackboneError, match="cannot read weights .* safely"):
        W.read_state_dict(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_gets_a_specific_message(tmp_path):
    path = tmp_path / "ViT-B-16.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(BackboneError, match="TorchScript"):
        W.read_state_dict(path)


def test_search_plan_lists_every_place(tmp_path):
    plan = W.search_plan(get_card("uni"), weights_dir=tmp_path)
    assert len(plan) == 4
    assert str(tmp_path / "uni") in plan[1]
    assert "MahmoodLab/UNI" in plan[2]
    assert W.search_plan(get_card("tiny-clip")) == ["none: random-weight demonstration card"]


@pytest.mark.parametrize("name", ["virchow2", "prov-gigapath", "h-optimus-0", "uni2-h"])
def test_gated_message_says_gated_links_the_page_and_gives_the_login(tmp_path, name):
    card = get_card(name)
    with pytest.raises(WeightsNotFoundError) as info:
        W.resolve_weights(card, weights_dir=tmp_path)
    first, *rest = str(info.value).splitlines()
    assert "gated" in first and f"https://huggingface.co/{card.hub_repo}" in first
    assert "hf auth login" in first
    assert f"hf download {card.hub_repo} {card.weights_files[0]}" in "\n".join(rest)


def test_ungated_new_cards_do_not_say_gated(tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        W.resolve_weights(get_card("dinobloom-b"), weights_dir=tmp_path)
    assert "is gated" not in str(info.value) and "MarrLab/DinoBloom DinoBloom-B.pth" in str(info.value)


def test_dinov2_training_checkpoint_is_unwrapped_at_its_teacher(tmp_path):
    path = tmp_path / "DinoBloom-S.pth"
    torch.save({"teacher": {"backbone.cls_token": torch.zeros(1, 1, 4)},
                "student": {"backbone.cls_token": torch.ones(1, 1, 4)}}, str(path))
    state = W.read_state_dict(path)
    assert torch.equal(state["backbone.cls_token"], torch.zeros(1, 1, 4))
