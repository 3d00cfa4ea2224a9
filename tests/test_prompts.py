"""Class prompts: shipped phrases for every class of the study datasets, user overrides."""

from __future__ import annotations

import json

import pytest

from embedcyto.datasets import hicervix_labels, mlcc, sipakmed, bcfc
from embedcyto.prompts import PromptError, _shipped, class_prompts, readable, shipped_datasets


@pytest.mark.parametrize("adapter, classes", [
    ("sipakmed", sipakmed.CLASSES), ("mlcc", mlcc.CLASSES), ("bcfc", bcfc.CLASSES),
    ("hicervix", hicervix_labels.CLASSES),
    *[("hicervix", space.classes) for space in hicervix_labels.LABEL_SPACES.values()],
])
def test_every_class_of_every_study_dataset_has_a_written_phrase(adapter, classes):
    shipped = _shipped(adapter)
    assert set(classes) <= set(shipped["classes"]), set(classes) - set(shipped["classes"])
    prompts = class_prompts(adapter, classes)
    assert len(prompts.phrases) == len(classes) and all(p.strip() for p in prompts.phrases)
    assert all(t.count("{}") == 1 for t in prompts.templates)


def test_sipakmed_and_hicervix_phrases_are_readable():
    p = class_prompts("sipakmed", sipakmed.CLASSES)
    assert p.phrases[0] == "dyskeratotic squamous cell"
    assert p.texts()[0] == "a Pap smear image of a dyskeratotic squamous cell."
    assert len(p.texts()) == len(p.phrases) * len(p.templates)
    h = class_prompts("hicervix", ("ASC-US", "ADC-EMC", "microbe"))
    assert h.phrases == ("atypical squamous cells of undetermined significance",
                         "endometrial adenocarcinoma", "microorganisms")


def test_folder_dataset_defaults_to_class_names():
    p = class_prompts("folder", ("im_Normal_cells", "HSIL"))
    assert p.phrases == ("normal cells", "HSIL") and p.source == "embedcyto:folder"
    assert readable("Big_blob") == "big blob"


def test_prompts_file_overrides_templates_and_phrases_and_changes_the_digest(tmp_path):
    base = class_prompts("folder", ("a", "b"))
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"templates": ["an image of {}."], "classes": {"b": "bee cells"}}))
    p = class_prompts("folder", ("a", "b"), f)
    assert p.texts() == ["an image of a.", "an image of bee cells."]
    assert p.digest() != base.digest()
    assert class_prompts("folder", ("a", "b")).digest() == base.digest()


@pytest.mark.parametrize("content, match", [
    ({"templates": ["no slot"]}, "exactly once"),
    ({"classes": {"c": "x"}}, "no class 'c'.*a, b"),
    ({"classes": {"a": " "}}, "empty phrase"),
    ({"words": []}, "expected an object"),
])
def test_bad_prompts_file_is_a_clear_error(tmp_path, content, match):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(content))
    with pytest.raises(PromptError, match=match):
        class_prompts("folder", ("a", "b"), f)


def test_missing_prompts_file(tmp_path):
    with pytest.raises(PromptError, match="does not exist"):
        class_prompts("folder", ("a",), tmp_path / "nope.json")
    assert {"sipakmed", "hicervix", "mlcc", "bcfc", "folder"} <= set(shipped_datasets())
