"""The text head of a LoRA run (``--head text``): CLIP-LoRA's classifier, made from the model's
own text tower.

A vision-language model scores an image against a class by the cosine between the image
embedding and the class's text embedding, times its learned logit scale s (exp of
``logit_scale``: 100 for OpenAI CLIP). The class embedding is the prompt ensemble: every
template filled with the class phrase (:mod:`embedcyto.prompts`), each sentence embedded and
L2-normalised, the mean over templates normalised again. So the head is::

    logits_c = s * <f / |f|, t_c>        f: the (adapted) image embedding, t_c: unit class vector

- :class:`CosineHead` (``--head text``): the t_c are computed once from the frozen text tower
  and kept fixed, as is s; only the image side's LoRA trains. This is CLIP-LoRA with
  ``--encoder vision`` (``lora.py``: the textual features from ``clip_classifier`` are the
  classifier and ``get_lora_parameters`` gives the optimiser only LoRA matrices).
- :class:`TextLoraHead` (``--text-lora``): LoRA (the image side's settings) also on the text
  tower's attention, and the t_c recomputed from the adapted tower at every training step, with
  gradients, as CLIP-LoRA's default ``--encoder both`` does. At initialisation (B = 0) they
  equal the frozen tower's, so the model starts as the zero-shot classifier. In evaluation
  mode they are computed once and reused until the model trains again.

The text tower's own dropout (BERT's, for BiomedCLIP) stays off while training: only LoRA
dropout is drawn, as on the image side, whose ViTs have no dropout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from embedcyto.errors import LoraError
from embedcyto.prompts import ClassPrompts, class_prompts

#: Where a ``--text-lora`` run keeps its text-side adapter (peft format), beside ``adapter/``.
TEXT_ADAPTER_DIR = "text_adapter"


def ensemble(raw: torch.Tensor, n_classes: int, n_templates: int) -> torch.Tensor:
    """Class vectors [C, D] from sentence embeddings [C*T, D] (class-major): each sentence
    normalised, the mean over templates normalised again (CLIP's prompt ensembling)."""
    per = F.normalize(raw.float(), dim=-1).reshape(n_classes, n_templates, -1)
    return F.normalize(per.mean(dim=1), dim=-1)


def _cosine_logits(x: torch.Tensor, classes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return scale * F.normalize(x.float(), dim=-1) @ classes.T


class CosineHead(nn.Module):
    """``logits = s * cos(x, t_c)`` with fixed unit class vectors ``weight`` [C, D] and fixed
    ``logit_scale`` s (both buffers: nothing here trains)."""

    def __init__(self, class_embeddings, logit_scale: float):
        super().__init__()
        weight = torch.as_tensor(class_embeddings, dtype=torch.float32)
        self.register_buffer("weight", F.normalize(weight, dim=-1))
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _cosine_logits(x, self.weight, self.logit_scale)


class TextLoraHead(nn.Module):
    """The cosine head whose class vectors come from a LoRA-adapted text tower.

    Args:
        text: the peft model around (an unfused copy of) the text tower; called on tokens.
        tokens: every prompt sentence tokenized, class-major ([C*T, context]).
        n_classes, n_templates: C and T.
        logit_scale: s, fixed.
    """

    def __init__(self, text: nn.Module, tokens: torch.Tensor, n_classes: int,
                 n_templates: int, logit_scale: float):
        super().__init__()
        self.text = text
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.n_classes, self.n_templates = int(n_classes), int(n_templates)
        self._fixed: torch.Tensor | None = None
        self.train(True)

    @property
    def out_features(self) -> int:
        return self.n_classes

    def class_embeddings(self) -> torch.Tensor:
        """The unit class vectors [C, D] of the text tower as it is now (with gradients when
        enabled)."""
        return ensemble(self.text(self.tokens), self.n_classes, self.n_templates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        classes = self._fixed
        if classes is None:
            classes = self.class_embeddings()
            if not self.training and not torch.is_grad_enabled():
                self._fixed = classes  # evaluation: the text side cannot change until train()
        return _cosine_logits(x, classes, self.logit_scale)

    def train(self, mode: bool = True) -> "TextLoraHead":
        super().train(mode)
        self._fixed = None
        self.text.eval()  # the tower's own dropout stays off ...
        for module in self.text.modules():  # ... and LoRA dropout follows the mode
            table = getattr(module, "lora_dropout", None)
            if isinstance(table, nn.ModuleDict):
                table.train(mode)
        return self

    def cosine_head(self) -> CosineHead:
        """The head as it classifies now, with the class vectors fixed (what the run saves)."""
        was = self.training
        self.eval()
        with torch.no_grad():
            head = CosineHead(self.class_embeddings(), float(self.logit_scale))
        self.train(was)
        return head.to(self.logit_scale.device)


def run_prompts(view, dataset, prompts_file=None) -> ClassPrompts:
    """The prompts of the classes a run learns (``view``: its training label space); a prompts
    file may name a class of any label space of ``dataset``."""
    known: list[str] = [*dataset.classes]
    for space in dataset.label_spaces.values():
        known += list(space.classes)
    return class_prompts(dataset.adapter, view.classes, prompts_file, known=known)


def text_width_depth(tower: nn.Module) -> tuple[int, int]:
    """(width, blocks) of a text tower's transformer, from its configuration."""
    text = tower.text
    config = getattr(text, "config", None) or getattr(getattr(text, "text_model", None),
                                                      "config", None)
    if config is not None:
        return int(config.hidden_size), int(config.num_hidden_layers)
    return int(text.width), int(text.transformer.layers)


def build_text_head(card, prompts: ClassPrompts, settings, *, text_lora: bool, weights_path,
                    weights_sha256: str | None, weights_dir=None, device, dtype) -> nn.Module:
    """The head of a ``--head text`` run, on ``device``.

    The text tower comes from the same checkpoint as the image tower (``weights_path``; random
    weights when it is None, as for the random-weight cards). With ``text_lora`` its frozen
    weights take the run's precision, as the image backbone's do, and LoRA goes on its q/k/v/o
    projections named by ``settings``.

    Raises:
        LoraError: the text tower's checkpoint is not the image tower's.
    """
    from embedcyto.backbones.text import build_text_tower
    from embedcyto.lora.adapters import apply_lora

    tower = build_text_tower(card, weights=weights_path, weights_dir=weights_dir,
                             random_init=weights_path is None)
    if weights_path is not None and tower.weights_sha256 != weights_sha256:
        raise LoraError(f"the text tower of {card.name!r} was loaded from {tower.weights_path}, "
                        "not the image tower's checkpoint; pass that file as `weights=PATH`")
    texts = prompts.texts()
    n, t = len(prompts.classes), len(prompts.templates)
    if not text_lora:
        with torch.no_grad():
            classes = ensemble(tower.encode(texts), n, t)
        head = CosineHead(classes, tower.scale).to(device)
    else:
        scale, tokens = tower.scale, tower.tokenize(texts).to(device)
        tower = tower.to(device=device, dtype=dtype)
        head = TextLoraHead(apply_lora(tower, settings), tokens, n, t, scale).to(device)
    head.tokenizer_id = tower.tokenizer_id  # recorded in the run's config.json
    return head


def head_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameters by part: image LoRA, text LoRA, head (for ``config.json``)."""
    def count(module) -> int:
        return 0 if module is None else sum(p.numel() for p in module.parameters()
                                             if p.requires_grad)

    total = count(model)
    image = count(model.encoder)
    text = count(getattr(model.head, "text", None))
    return {"trainable": total, "lora_image": image, "lora_text": text,
            "head": total - image - text}


def expected_text_lora(model: nn.Module, rank: int, targets: Sequence[str]) -> int:
    """L * r * 2D * n_targets for the text tower of a ``--text-lora`` model, else 0."""
    from embedcyto.lora.adapters import expected_lora_parameters

    text = getattr(model.head, "text", None)
    if text is None:
        return 0
    width, depth = text_width_depth(text.get_base_model())
    return expected_lora_parameters(width, depth, rank, len(targets))
