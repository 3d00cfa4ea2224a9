"""Class prompts as data: a readable phrase per class and cytology prompt templates.

Vision-language models classify by comparing an image with the embedding of a sentence about
each class. embedcyto ships, per dataset adapter, the phrase of every class name (HiCervix's
abbreviations at every level spelled out, SIPaKMeD's folder names made readable) and a handful of
templates ("a Pap smear image of a {}."). Each class's embedding is the mean over templates of
the normalised sentence embeddings (CLIP's prompt ensembling). Folder and CSV datasets default to
the class names themselves with generic templates. A user's JSON file (``--prompts FILE``)
replaces the templates and/or any class phrases:

    {"templates": ["a cytology image of {}."], "classes": {"im_Dyskeratotic": "dyskeratotic cell"}}
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from embedcyto.errors import EmbedcytoError


class PromptError(EmbedcytoError):
    """A prompts file or template that cannot be used; the message names the fix."""


@dataclass(frozen=True)
class ClassPrompts:
    """Templates, one phrase per class (in class order) and where they came from."""

    classes: tuple[str, ...]
    phrases: tuple[str, ...]
    templates: tuple[str, ...]
    source: str

    def texts(self) -> list[str]:
        """Every sentence, class-major: class 0 with each template, then class 1, ..."""
        return [t.replace("{}", p) for p in self.phrases for t in self.templates]

    def to_dict(self) -> dict:
        return {"classes": list(self.classes), "phrases": list(self.phrases),
                "templates": list(self.templates), "source": self.source}

    def digest(self) -> str:
        """SHA-256 of classes, phrases and templates: changes whenever any sentence would."""
        payload = {k: v for k, v in self.to_dict().items() if k != "source"}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def shipped_datasets() -> tuple[str, ...]:
    """Adapters with shipped prompts (``folder`` holds the generic templates)."""
    folder = resources.files("embedcyto.prompts") / "data"
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json")))


def _shipped(adapter: str) -> dict:
    name = adapter if adapter in shipped_datasets() else "folder"
    path = resources.files("embedcyto.prompts") / "data" / f"{name}.json"
    return json.loads(path.read_text("utf-8")) | {"_name": name}


def readable(name: str) -> str:
    """A class folder name as words: ``im_Normal_cells`` -> ``normal cells``; ``HSIL`` stays."""
    text = re.sub(r"_+", " ", re.sub(r"^im_", "", str(name))).strip()
    return text if text.isupper() else text.lower()


def _check_templates(templates, where: str) -> tuple[str, ...]:
    if not isinstance(templates, list) or not templates:
        raise PromptError(f"{where}: 'templates' must be a non-empty list of strings")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise PromptError(f"{where}: template {t!r} must contain '{{}}' exactly once "
                              "(where the class phrase goes)")
    return tuple(templates)


def _read_file(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PromptError(f"prompts file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PromptError(f"prompts file {path} is not readable JSON: {err}") from err
    if not isinstance(data, dict) or not set(data) <= {"templates", "classes", "source"}:
        raise PromptError(f"prompts file {path}: expected an object with 'templates' and/or "
                          "'classes' (class name -> phrase)")
    return data


def class_prompts(adapter: str, classes: Sequence[str],
                  prompts_file: str | Path | None = None, *,
                  known: Sequence[str] | None = None) -> ClassPrompts:
    """The prompts of a dataset's classes: shipped ones, overlaid with ``prompts_file``.

    ``known``: every class name the file may name (all label spaces of the dataset); defaults
    to ``classes``.

    Raises:
        PromptError: a malformed file, a template without ``{}``, a phrase for a class the
            dataset does not have (typos must not pass), or an empty phrase.
    """
    base = _shipped(adapter)
    templates = tuple(base["templates"])
    phrases: Mapping[str, str] = dict(base.get("classes", {}))
    source = f"embedcyto:{base['_name']}"
    if prompts_file is not None:
        user = _read_file(Path(prompts_file))
        where = f"prompts file {prompts_file}"
        if "templates" in user:
            templates = _check_templates(user["templates"], where)
        extra = user.get("classes", {})
        if not isinstance(extra, dict):
            raise PromptError(f"{where}: 'classes' must map class names to phrases")
        known = tuple(dict.fromkeys(known or classes))
        unknown = sorted(set(extra) - set(known))
        if unknown:
            raise PromptError(f"{where}: no class {', '.join(map(repr, unknown))} in this "
                              f"dataset; its classes are {', '.join(known)}")
        phrases = {**phrases, **extra}
        source = f"{source} + {Path(prompts_file).name}"
    out = []
    for name in classes:
        phrase = phrases.get(name, readable(name))
        if not isinstance(phrase, str) or not phrase.strip():
            raise PromptError(f"class {name!r} has an empty phrase; give it words")
        out.append(phrase.strip())
    return ClassPrompts(tuple(classes), tuple(out), templates, source)
