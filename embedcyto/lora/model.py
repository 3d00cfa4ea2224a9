"""The model a LoRA run trains: a LoRA-wrapped backbone followed by a head.

Only the LoRA matrices and the head receive gradients; the backbone's own weights stay frozen
(peft freezes them). The head sits on the card's embedding, the same vector the store holds, so
the adapted features written back to the store are exactly what the head saw. The head is the
study's linear layer, or (``head="text"``) the model's own text classifier
(:mod:`embedcyto.lora.texthead`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from embedcyto.errors import LoraError
from embedcyto.lora.adapters import LoraSettings, apply_lora


class LoraClassifier(nn.Module):
    """``images -> encoder (backbone + LoRA) -> embedding -> head -> logits``.

    Attributes:
        encoder: the peft model around an unfused copy of the backbone.
        head: ``nn.Linear(embed_dim, n_classes)``, or a text head
            (:class:`embedcyto.lora.texthead.CosineHead`, ``TextLoraHead``); its parameters
            are float32 whatever the backbone's precision.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The adapted embedding ``[B, embed_dim]``."""
        return self.encoder(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(images).float())


def make_head(embed_dim: int, n_classes: int, seed: int) -> nn.Linear:
    """A linear head initialised like ``nn.Linear`` but from an explicit seeded generator."""
    head = nn.Linear(embed_dim, n_classes)
    generator = torch.Generator().manual_seed(int(seed))
    bound = 1.0 / math.sqrt(embed_dim)
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.zero_()
    return head


def build_classifier(backbone: nn.Module, settings: LoraSettings, n_classes: int,
                     seed: int) -> LoraClassifier:
    """LoRA on an unfused copy of ``backbone`` (left unchanged) plus a fresh linear head."""
    if n_classes < 2:
        raise LoraError(f"a classifier needs at least 2 classes, the dataset has {n_classes}")
    encoder = apply_lora(backbone, settings)
    device = next(backbone.parameters()).device
    head = make_head(backbone.card.embed_dim, n_classes, seed).to(device)
    return LoraClassifier(encoder, head)


def build_run_model(card, config, n_classes: int, device, dtype, inputs) -> LoraClassifier:
    """The model a run trains: LoRA on the backbone, and the linear or text head.

    ``inputs``: (weights path, its sha256, weights folder, class prompts of a text head). The
    image side is built first, so its LoRA initialisation (drawn from the seeded global
    generator) is the same whatever the head.
    """
    from embedcyto.backbones import build_backbone

    wpath, sha, weights_dir, prompts = inputs
    backbone = build_backbone(card, weights=wpath, random_init=wpath is None, device=device,
                              dtype=dtype)
    model = build_classifier(backbone, config.settings, n_classes, config.seed)
    if config.head == "text":
        from embedcyto.lora.texthead import build_text_head

        model.head = build_text_head(card, prompts, config.settings,
                                     text_lora=config.text_lora, weights_path=wpath,
                                     weights_sha256=sha, weights_dir=weights_dir,
                                     device=device, dtype=dtype)
    return model


def enable_grad_checkpointing(model: nn.Module) -> str:
    """Switch on the model library's own gradient checkpointing; returns the module's type.

    open_clip's ``VisionTransformer`` and timm's ``VisionTransformer`` both expose
    ``set_grad_checkpointing`` (transformers models: ``activation_checkpointing_enable``): each transformer block's activations are then recomputed during
    the backward pass (``torch.utils.checkpoint``, non-reentrant in open_clip), so gradients
    still reach the LoRA matrices inside the blocks. The outermost module that offers the
    switch is used (BiomedCLIP: the timm trunk).

    Raises:
        LoraError: the backbone offers no gradient checkpointing.
    """
    for module in model.modules():
        if _is_transformers_model(module):  # transformers' own switch, non-reentrant
            switch = getattr(module, "activation_checkpointing_enable", None)  # transformers 5
            switch = switch or module.gradient_checkpointing_enable
            switch({"use_reentrant": False})
            return type(module).__name__
        switch = getattr(module, "set_grad_checkpointing", None)
        if callable(switch) and not isinstance(module, LoraClassifier):
            try:
                switch(True)
            except (NotImplementedError, AssertionError) as err:
                raise LoraError(f"{type(module).__name__} refused gradient checkpointing: "
                                f"{err}; run without `grad_checkpointing=True`") from err
            return type(module).__name__
    raise LoraError("this backbone offers no gradient checkpointing; run without "
                    "`grad_checkpointing=True`")


def _is_transformers_model(module: nn.Module) -> bool:
    import sys

    transformers = sys.modules.get("transformers")  # loaded only if a transformers card is used
    return transformers is not None and isinstance(module, transformers.PreTrainedModel)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the parameters that train (LoRA matrices and head), for best-val snapshots."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def restore_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put a :func:`trainable_state` snapshot back."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def load_classifier(run_dir, *, weights=None, weights_dir=None, device="cpu",
                    dtype=None) -> LoraClassifier:
    """Rebuild a finished run's model: the backbone, its saved adapter and its head.

    The backbone is rebuilt from the run's card with the weights it was trained on (random
    weights when it was trained on random weights; otherwise ``weights``, or the recorded path,
    or the usual weights search), and its hash is checked against the run's. Its frozen weights
    take the precision the run trained in unless ``dtype`` says otherwise.

    Raises:
        LoraError: not a finished run, or the backbone weights differ from the run's.
    """
    from pathlib import Path

    from safetensors.torch import load_file

    from embedcyto.backbones import build_backbone, get_card
    from embedcyto.lora import runs
    from embedcyto.lora.adapters import load_adapter

    run_dir = Path(run_dir)
    info = runs.read_run_config(run_dir)
    card = get_card(info["card"]["name"])
    if dtype is None:
        dtype = getattr(torch, info["resolved"]["precision"])
    if info["weights_sha256"] == "random-init":
        backbone = build_backbone(card, random_init=True, device=device, dtype=dtype)
    else:
        backbone = build_backbone(card, weights=weights or info.get("weights_path"),
                                  weights_dir=weights_dir, device=device, dtype=dtype)
        if backbone.weights_sha256 != info["weights_sha256"]:
            raise LoraError(
                f"the run in {run_dir} was trained on weights with sha256 "
                f"{info['weights_sha256'][:12]}..., but {backbone.weights_path} has "
                f"{str(backbone.weights_sha256)[:12]}...; pass the original file as `weights=PATH`")
    encoder = load_adapter(backbone, run_dir / runs.ADAPTER_DIR)
    state = load_file(str(run_dir / runs.HEAD_FILE))
    if info["config"].get("head", "linear") == "text":
        from embedcyto.lora.texthead import CosineHead

        head = CosineHead(state["weight"], float(state["logit_scale"]))
    else:
        head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        head.load_state_dict(state)
    model = LoraClassifier(encoder, head.to(device))
    return model.eval()
