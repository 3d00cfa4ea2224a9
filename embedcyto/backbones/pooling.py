"""Reading the embedding off a token sequence, the way each model's authors do.

Most models are read at the class token after the final norm, which the libraries' own heads
already return. Some authors recommend more: Virchow2 and Midnight concatenate the class token
with the mean of the patch tokens, skipping register tokens. :func:`pool_tokens` is that rule in
one place; :class:`TokenPooled` puts it behind a timm model, :class:`TransformersEncoder` behind a
transformers model. Both keep the library model as ``.model`` so its checkpoint loads unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from embedcyto.errors import BackboneError


def pool_tokens(tokens: torch.Tensor, pool: str, prefix_tokens: int) -> torch.Tensor:
    """``[B, T, D]`` tokens (class token first, then registers, then patches) -> ``[B, D']``.

    Args:
        tokens: The encoder's output tokens after its final norm.
        pool: ``"cls"`` or ``"cls+mean"``.
        prefix_tokens: Class token plus register tokens; patch tokens start here.
    """
    cls = tokens[:, 0]
    if pool == "cls":
        return cls
    if pool == "cls+mean":
        return torch.cat([cls, tokens[:, prefix_tokens:].mean(dim=1)], dim=-1)
    raise BackboneError(f"token pooling {pool!r} is not one of cls, cls+mean")


class TokenPooled(nn.Module):
    """A timm ViT whose ``forward_features`` tokens are pooled by :func:`pool_tokens`."""

    def __init__(self, model: nn.Module, pool: str):
        super().__init__()
        self.model = model
        self.pool = pool
        self.prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))

    @property
    def weights_root(self) -> nn.Module:
        return self.model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return pool_tokens(self.model.forward_features(images), self.pool, self.prefix_tokens)

    def extra_repr(self) -> str:
        return f"pool={self.pool!r}, prefix_tokens={self.prefix_tokens}"


class TransformersEncoder(nn.Module):
    """A transformers vision model called with ``pixel_values``, pooled as the card says."""

    def __init__(self, model: nn.Module, pool: str, prefix_tokens: int = 1):
        super().__init__()
        self.model = model
        self.pool = pool
        self.prefix_tokens = prefix_tokens

    @property
    def weights_root(self) -> nn.Module:
        return self.model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=images)
        if self.pool == "projection":
            return out.image_embeds
        if self.pool == "pooler":
            return out.pooler_output
        return pool_tokens(out.last_hidden_state, self.pool, self.prefix_tokens)

    def extra_repr(self) -> str:
        return f"pool={self.pool!r}"
