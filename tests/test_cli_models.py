"""`embedcyto models list` and `embedcyto models show`."""

from __future__ import annotations

import json

from click.testing import CliRunner
from safetensors.torch import save_file
import torch

from embedcyto.backbones.cards import list_cards
from embedcyto.cli.main import cli


def _run(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env)


def test_list_shows_every_card_with_its_columns():
    result = _run("models", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = lines[0].split()
    assert header[:9] == ["NAME", "FAMILY", "DOMAIN", "PARAMS", "EMBED", "INPUT", "GATED",
                          "WEIGHTS", "KIND"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {c.name for c in list_cards()}
    assert rows["uni"][1:9] == ["timm", "pathology", "303M", "1024", "224", "yes", "no", "study"]
    assert rows["clip"][1:9] == ["open_clip", "natural,vision-language", "86M", "512", "224", "no",
                                 "no", "study"]
    assert rows["tiny-clip"][7:9] == ["random", "RANDOM-demo"]


def test_list_json_round_trips_the_cards():
    result = _run("models", "list", "--json")
    assert result.exit_code == 0
    names = [c["name"] for c in json.loads(result.output)]
    assert names == [c.name for c in list_cards()]


def test_show_prints_the_card_and_where_weights_are_looked_for(tmp_path):
    result = _run("models", "show", "uni", "--weights-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    card_json = result.output.split("\nattention (for LoRA)")[0]
    assert json.loads(card_json)["hub_repo"] == "MahmoodLab/UNI"
    assert "attention (for LoRA): fused attn.qkv" in result.output
    assert "gated: accept the terms at https://huggingface.co/MahmoodLab/UNI" in result.output
    assert str(tmp_path / "uni") in result.output
    assert "found: nothing on this machine" in result.output
    assert "hf download MahmoodLab/UNI pytorch_model.bin" in result.output


def test_show_finds_weights_in_the_environment_weights_dir(tmp_path):
    file = tmp_path / "vit" / "model.safetensors"
    file.parent.mkdir()
    save_file({"w": torch.zeros(1)}, str(file))
    result = _run("models", "show", "vit", env={"EMBEDCYTO_WEIGHTS": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert f"found: {file}" in result.output


def test_show_json_only_and_random_card():
    result = _run("models", "show", "tiny-vit", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["random"] is True
    plain = _run("models", "show", "tiny-vit")
    assert "random-weight demonstration card" in plain.output


def test_show_unknown_model_is_a_clean_error():
    result = _run("models", "show", "clipp")
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "unknown model 'clipp'" in result.output and "Did you mean clip" in result.output


def _names(result):
    assert result.exit_code == 0, result.output
    return [line.split()[0] for line in result.output.splitlines()[1:] if line.strip()]


def test_list_shows_at_least_twenty_pretrained_cards_with_estimates():
    lines = _run("models", "list").output.splitlines()
    header = lines[0].split()
    assert header[9:11] == ["CPU_MS~", "GPU_MS~"]
    real = [line.split() for line in lines[1:] if "RANDOM-demo" not in line]
    assert len(real) >= 20
    assert all(row[3] != "-" and float(row[9]) > 0 and float(row[10]) > 0 for row in real)
    big = {row[0]: row for row in real}
    assert big["virchow2"][3:5] == ["631M", "2560"] and big["h-optimus-0"][3] == "1.13B"


def test_list_filters_by_family_and_domain():
    transformers = _names(_run("models", "list", "--family", "transformers"))
    assert {"vit-hf", "phikon", "phikon-v2", "midnight", "dinov2-b14", "plip"} <= set(transformers)
    assert all(c.family == "transformers" for c in list_cards() if c.name in transformers)
    cytology = _names(_run("models", "list", "--domain", "cytology"))
    assert set(cytology) == {"dinobloom-s", "dinobloom-b", "dinobloom-l", "dinobloom-g"}
    vl = set(_names(_run("models", "list", "--domain", "vision-language")))
    assert {"plip", "clip", "quilt", "biomedclip"} <= vl and "uni" not in vl
    bad = _run("models", "list", "--domain", "radiology")
    assert bad.exit_code != 0 and "radiology" in bad.output


def test_list_present_shows_only_cards_whose_weights_are_here(tmp_path):
    file = tmp_path / "phikon" / "model.safetensors"
    file.parent.mkdir()
    save_file({"w": torch.zeros(1)}, str(file))
    result = _run("models", "list", "--weights-dir", str(tmp_path))
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:]}
    assert rows["phikon"][7] == "yes" and rows["uni"][7] == "no"
    assert _names(_run("models", "list", "--present", "--weights-dir", str(tmp_path))) == ["phikon"]
    empty = _run("models", "list", "--present")
    assert "no model matches" in empty.output


def test_show_states_the_attention_layout_of_a_transformers_card():
    result = _run("models", "show", "phikon-v2")
    assert result.exit_code == 0, result.output
    assert "attention (for LoRA): separate q_proj, k_proj, v_proj and o_proj" in result.output
    assert "gated:" not in result.output
