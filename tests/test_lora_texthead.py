"""LoRA with a text head (``head="text"``) and LoRA on the text tower (``text_lora``): the
config, exactness at initialisation on every tiny vision-language card, what trains, runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from embedcyto.backbones import build_backbone, get_card
from embedcyto.backbones.runtime import torch_threads
from embedcyto.backbones.text import build_text_tower, text_cards
from embedcyto.cli._common import open_for_store
from embedcyto.datasets.fixtures import make_fixture
from embedcyto.errors import LoraError
from embedcyto.lora import runs
from embedcyto.lora.adapters import LoraSettings, _targets_of
from embedcyto.lora.config import LoraRunConfig
from embedcyto.lora.model import LoraClassifier, build_classifier, load_classifier
from embedcyto.lora.texthead import (
    TEXT_ADAPTER_DIR,
    CosineHead,
    TextLoraHead,
    build_text_head,
)
from embedcyto.lora.unfuse import target_module_names
from embedcyto.prompts import class_prompts
from embedcyto.textembed import embed_prompts

#: The random-weight vision-language cards (every tiny card with a text tower).
TINY_VL = sorted(c for c in text_cards() if get_card(c).random)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def test_every_tiny_vision_language_card_is_covered():
    assert TINY_VL == ["tiny-biomedclip", "tiny-clip"]


# -- config ------------------------------------------------------------------------------------

def test_the_head_is_a_setting_that_names_the_run_folder_and_the_exported_features():
    linear = LoraRunConfig(model="clip", dataset="sipakmed", shots=4)
    assert linear.head == "linear" and not linear.text_lora and linear.mode == "shots-4"
    text = LoraRunConfig(model="clip", dataset="sipakmed", shots=4, head="text")
    both = LoraRunConfig(model="clip", dataset="sipakmed", shots=4, head="text", text_lora=True)
    assert (text.mode, both.mode) == ("shots-4-texthead", "shots-4-textlora")
    assert both.variant == "clip+lora-shots-4-textlora-s1"
    assert LoraRunConfig(model="clip", dataset="x", fraction=10, head="text").mode == \
        "frac-10-texthead"
    assert text.identity()["head"] == "text" and both.identity()["text_lora"] is True
    assert LoraRunConfig.from_json(both.to_json()) == both
    assert len({runs.run_dir("r", c) for c in (linear, text, both)}) == 3


def test_a_text_head_on_an_image_only_card_names_the_cards_that_have_a_text_tower():
    with pytest.raises(LoraError) as err:
        LoraRunConfig(model="uni", dataset="x", shots=1, head="text")
    message = str(err.value)
    assert "'uni' has no text encoder" in message and "`head=linear`" in message
    assert all(name in message for name in text_cards())
    with pytest.raises(LoraError, match="add `head=text`"):
        LoraRunConfig(model="clip", dataset="x", shots=1, text_lora=True)
    with pytest.raises(LoraError, match="choose `head=` from linear, text"):
        LoraRunConfig(model="clip", dataset="x", shots=1, head="cosine")


# -- exactness at initialisation ---------------------------------------------------------------

def _prompts():
    return class_prompts("sipakmed", ["Dyskeratotic", "Koilocytotic", "Parabasal"])


def _head(card, text_lora, dropout=0.25):
    return build_text_head(card, _prompts(), LoraSettings(dropout=dropout), text_lora=text_lora,
                           weights_path=None, weights_sha256=None, device=CPU,
                           dtype=torch.float32)


@pytest.mark.parametrize("name", TINY_VL)
def test_at_initialisation_the_adapted_text_tower_gives_the_frozen_class_embeddings(name):
    card = get_card(name)
    frozen, _ = embed_prompts(build_text_tower(card, random_init=True), _prompts())
    fixed = _head(card, text_lora=False)
    adapted = _head(card, text_lora=True).eval()
    assert isinstance(fixed, CosineHead) and isinstance(adapted, TextLoraHead)
    with torch.no_grad():
        recomputed = adapted.class_embeddings()
    np.testing.assert_allclose(fixed.weight.numpy(), frozen, rtol=0, atol=1e-6)
    np.testing.assert_allclose(recomputed.numpy(), frozen, rtol=0, atol=1e-6)
    tower = build_text_tower(card, random_init=True)
    assert float(fixed.logit_scale) == float(adapted.logit_scale) == pytest.approx(tower.scale)

    # the whole model: LoRA on both towers (B = 0) gives the frozen zero-shot classifier
    backbone = build_backbone(card, random_init=True)
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    models = []
    for head in (fixed, adapted):
        model = build_classifier(backbone, LoraSettings(), 3, seed=0)
        model.head = head
        models.append(model.eval())
    with torch.no_grad():
        zero_shot = tower.scale * torch.nn.functional.normalize(backbone(images), dim=-1) \
            @ torch.as_tensor(frozen).T
        logits = [m(images) for m in models]
    torch.testing.assert_close(logits[0], zero_shot, rtol=0, atol=1e-4)
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=1e-4)


def test_bert_attention_takes_lora_on_query_and_value_like_the_image_side():
    tower = build_text_tower("tiny-biomedclip", random_init=True)
    names = target_module_names(tower, ("q", "v"))
    assert names == [f"text.transformer.encoder.layer.{i}.attention.self.{p}"
                     for i in range(2) for p in ("query", "value")]
    assert target_module_names(tower, ("o",))[0].endswith("attention.output.dense")
    assert _targets_of(names) == ("q", "v")


# -- what trains -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TINY_VL)
def test_only_lora_matrices_of_both_towers_get_gradients(name):
    card = get_card(name)
    backbone = build_backbone(card, random_init=True)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for text_lora in (False, True):
        model = build_classifier(backbone, LoraSettings(dropout=0.0), 3, seed=0)
        model.head = _head(card, text_lora, dropout=0.0)
        with torch.no_grad():  # non-zero B, so gradients reach A too
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
        model.train()
        model(images).logsumexp(dim=1).sum().backward()
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        with_grad = {n for n, p in model.named_parameters()
                     if p.grad is not None and p.grad.abs().sum() > 0}
        assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
        assert with_grad == trainable
        text = {n for n in trainable if n.startswith("head.")}
        assert bool(text) == text_lora  # the text head itself never trains
        assert not any(p.requires_grad for p in model.head.buffers())


def test_the_text_side_dropout_is_only_loras_and_evaluation_reuses_the_class_vectors():
    head = _head(get_card("tiny-biomedclip"), text_lora=True, dropout=0.5)
    head.train()
    bert_dropouts = [m for n, m in head.text.named_modules()
                     if isinstance(m, torch.nn.Dropout) and "lora_dropout" not in n]
    lora_dropouts = [m for n, m in head.text.named_modules()
                     if isinstance(m, torch.nn.Dropout) and "lora_dropout" in n]
    assert bert_dropouts and lora_dropouts
    assert not any(m.training for m in bert_dropouts) and all(m.training for m in lora_dropouts)
    head.eval()
    with torch.no_grad():
        first = head(torch.randn(2, 32))
        assert head._fixed is not None and first.shape == (2, 3)
    head.train()
    assert head._fixed is None


# -- runs --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    base = tmp_path_factory.mktemp("lora_text")
    root = make_fixture("folder", base / "toy", per_class=12)
    dataset, split_dir = open_for_store("folder", str(root), store_dir=base / "cache")
    return dataset, split_dir, base


def _config(dataset, **kwargs) -> LoraRunConfig:
    base = dict(model="tiny-clip", dataset=dataset.name, shots=2, seed=1, lr=5e-2, warmup=2,
                iterations=8, batch_size=6, device="cpu", precision="fp32", num_workers=0,
                settings=LoraSettings(dropout=0.0), head="text", text_lora=True)
    base.update(kwargs)
    return LoraRunConfig(**base)


@pytest.fixture(scope="module")
def text_run(toy):
    from embedcyto.lora.train import train_lora

    dataset, split_dir, base = toy
    with torch_threads(1):
        return train_lora(dataset, _config(dataset), runs_dir=base / "runs", split_dir=split_dir)


def test_training_moves_the_text_side_lora_and_the_run_keeps_its_classifier(toy, text_run):
    folder = text_run.run_dir
    assert folder.name == "seed-1" and folder.parent.name == "shots-2-textlora"
    text = load_file(str(folder / TEXT_ADAPTER_DIR / "adapter_model.safetensors"))
    b = [v for k, v in text.items() if "lora_B" in k]
    assert b and all(v.abs().max() > 0 for v in b)  # B started at zero
    info = runs.read_run_config(folder)
    params = info["parameters"]
    assert params["lora_text"] == 2 * 2 * 2 * 32 * 2  # L * r * 2D * (q, v) of the text tower
    assert params["lora_image"] == 2 * 2 * 2 * 64 * 2 and params["head"] == 0
    assert params["lora"] == params["lora_expected"] == params["trainable"] == 1536
    assert info["prompts"]["templates"] and info["identity"]["prompts_sha256"] == \
        info["prompts"]["sha256"] and info["text_tokenizer"].startswith("open_clip")

    head = load_file(str(folder / runs.HEAD_FILE))
    assert set(head) == {"weight", "logit_scale"} and head["weight"].shape == (3, 32)
    dataset = toy[0]
    from embedcyto.lora.train import predict_proba

    model = load_classifier(folder)
    assert isinstance(model, LoraClassifier) and isinstance(model.head, CosineHead)
    saved = np.load(folder / runs.PREDICTIONS_FILE)
    rows = np.array([i for i, r in enumerate(dataset.records) if r.split == "test"])
    np.testing.assert_allclose(predict_proba(model, dataset, rows, device=CPU), saved["proba"],
                               atol=1e-5)


def test_a_fixed_text_head_trains_only_the_image_side_and_keeps_the_text_classifier(toy):
    from embedcyto.lora.train import train_lora

    dataset, split_dir, base = toy
    config = _config(dataset, text_lora=False, iterations=4)
    result = train_lora(dataset, config, runs_dir=base / "runs", split_dir=split_dir)
    folder = result.run_dir
    assert folder.parent.name == "shots-2-texthead" and not (folder / TEXT_ADAPTER_DIR).exists()
    params = runs.read_run_config(folder)["parameters"]
    assert params["lora_text"] == 0 and params["head"] == 0 and params["trainable"] == 1024
    prompts = class_prompts("folder", dataset.classes)
    frozen, _ = embed_prompts(build_text_tower("tiny-clip", random_init=True), prompts)
    head = load_file(str(folder / runs.HEAD_FILE))
    np.testing.assert_allclose(head["weight"].numpy(), frozen, atol=1e-6)  # unchanged


def test_other_prompts_are_another_run_and_older_runs_without_a_head_are_still_found(toy,
                                                                                    text_run,
                                                                                    tmp_path):
    from embedcyto.lora.train import train_lora

    dataset, split_dir, base = toy
    config = _config(dataset)
    same = train_lora(dataset, config, runs_dir=base / "runs", split_dir=split_dir)
    assert same.skipped
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"templates": ["cells: {}."]}))
    with pytest.raises(LoraError, match="prompts_sha256"):
        train_lora(dataset, config, runs_dir=base / "runs", split_dir=split_dir,
                   prompts_file=prompts)

    # a linear run written before heads existed (no head / text_lora keys) is still "done"
    linear = _config(dataset, head="linear", text_lora=False, iterations=2, warmup=1)
    first = train_lora(dataset, linear, runs_dir=tmp_path / "runs", split_dir=split_dir)
    path = first.run_dir / runs.CONFIG_FILE
    info = json.loads(path.read_text())
    for part in (info["config"], info["identity"]["config"]):
        del part["head"], part["text_lora"]
    path.write_text(json.dumps(info))
    again = train_lora(dataset, linear, runs_dir=tmp_path / "runs", split_dir=split_dir)
    assert again.skipped
    assert runs.conflicts(tmp_path / "runs", [linear]) == []
