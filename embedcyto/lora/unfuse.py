"""Split fused attention projections into separate q, k, v (and output) linear layers.

LoRA on only the q and v parts of a fused projection is impossible with peft: a fused
``qkv = Linear(D, 3D)`` is a single layer, and peft's ``nn.MultiheadAttention`` support adapts
q, k, v and the output together. So before LoRA, each fused projection is replaced by an exactly
equivalent module that owns one ``nn.Linear`` per projection, which peft can then target one by one:

- open_clip (CLIP, QuiltNet): every ``nn.MultiheadAttention`` becomes
  :class:`UnfusedMultiheadAttention` with ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``. It
  accepts the same call (``query, key, value, need_weights, attn_mask, ...``, ``batch_first``)
  and returns the same ``(output, weights)`` tuple.
- timm (ViT, BiomedCLIP, UNI): each ``Attention.qkv`` becomes :class:`SplitQKV`, owning
  ``q_proj``, ``k_proj``, ``v_proj`` and returning their concatenation. timm's own head split,
  q/k norm, scaling, output projection (``attn.proj``) and LayerScale are left untouched.

Module names after unfusing, per target: q = ``...attn.q_proj`` / ``...attn.qkv.q_proj``,
k and v likewise, o = ``...attn.out_proj`` (open_clip) / ``...attn.proj`` (timm).
transformers models need no unfusing: their attention already owns ``q_proj``, ``k_proj``,
``v_proj`` and ``o_proj`` (CLIP: ``out_proj``), which are targeted as they are; BERT (the text
tower of BiomedCLIP) names them ``attention.self.query``, ``.key``, ``.value`` and
``attention.output.dense``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from embedcyto.errors import LoraError
from embedcyto.lora.config import TARGETS


def _linear_like(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out_features, in_features = weight.shape
    layer = nn.Linear(
        in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    layer.weight.requires_grad_(weight.requires_grad)
    if bias is not None:
        layer.bias.requires_grad_(bias.requires_grad)
    return layer


class UnfusedMultiheadAttention(nn.Module):
    """Drop-in for ``nn.MultiheadAttention`` with separate q, k, v and output projections."""

    def __init__(self, q_proj, k_proj, v_proj, out_proj, num_heads, dropout=0.0, batch_first=False):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj
        self.embed_dim = q_proj.out_features
        self.num_heads = num_heads
        self.head_dim = self.embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> "UnfusedMultiheadAttention":
        """Copy the weights of ``mha`` (packed in q, k, v order) into separate layers."""
        if mha.bias_k is not None or mha.add_zero_attn:
            raise LoraError("attention with add_bias_kv or add_zero_attn cannot be unfused")
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.chunk(3, dim=0)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None,) * 3
        q, k, v = (_linear_like(w, b) for w, b in zip(weights, biases))
        out = _linear_like(mha.out_proj.weight, mha.out_proj.bias)
        return cls(q, k, v, out, mha.num_heads, dropout=mha.dropout, batch_first=mha.batch_first)

    def _mask(self, attn_mask, key_padding_mask, batch, length, source, dtype):
        """One additive float mask broadcastable to ``[B, H, L, S]`` (None when no mask)."""
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, dtype)
            if mask.dim() == 3:
                mask = mask.view(batch, self.num_heads, length, source)
        if key_padding_mask is not None:
            pad = _additive(key_padding_mask, dtype).view(batch, 1, 1, source)
            mask = pad if mask is None else mask + pad
        return mask

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ):
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or unbatched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, length, _ = query.shape
        source = key.shape[1]
        heads, dim = self.num_heads, self.head_dim
        q = self.q_proj(query).view(batch, length, heads, dim).transpose(1, 2)
        k = self.k_proj(key).view(batch, source, heads, dim).transpose(1, 2)
        v = self.v_proj(value).view(batch, source, heads, dim).transpose(1, 2)
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1)
        mask = self._mask(attn_mask, key_padding_mask, batch, length, source, q.dtype)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * (1.0 / math.sqrt(dim))) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, p=p) @ v
            weights = weights.mean(dim=1) if average_attn_weights else weights
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, heads * dim))
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
            weights = weights.squeeze(0) if weights is not None else None
        return out, weights


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True = not allowed, as nn.MultiheadAttention has it) as an additive mask."""
    if mask.dtype == torch.bool:
        zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return zeros.masked_fill(mask, float("-inf"))
    return mask.to(dtype)


class SplitQKV(nn.Module):
    """Stands in for timm's fused ``attn.qkv``: three linear layers, outputs concatenated."""

    def __init__(self, q_proj: nn.Linear, k_proj: nn.Linear, v_proj: nn.Linear):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = q_proj, k_proj, v_proj
        self.in_features = q_proj.in_features
        self.out_features = 3 * q_proj.out_features

    @classmethod
    def from_linear(cls, qkv: nn.Linear) -> "SplitQKV":
        if qkv.out_features % 3:
            raise LoraError(f"fused qkv has {qkv.out_features} outputs, not a multiple of 3")
        weights = qkv.weight.chunk(3, dim=0)
        biases = qkv.bias.chunk(3) if qkv.bias is not None else (None,) * 3
        return cls(*(_linear_like(w, b) for w, b in zip(weights, biases)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)


def _is_timm_fused(module: nn.Module) -> bool:
    qkv = getattr(module, "qkv", None)
    return isinstance(qkv, nn.Linear) and hasattr(module, "num_heads") and hasattr(module, "proj")


def unfuse_attention(model: nn.Module) -> int:
    """Replace every fused attention projection in ``model`` by separate linear layers.

    The module tree is changed in place (pass a deep copy to keep the original); the outputs are
    the same up to float rounding. Already unfused modules are left alone.

    Returns:
        The number of attention blocks replaced.

    Raises:
        LoraError: an attention variant whose biases live outside the fused layer (BEiT/EVA style).
    """
    replaced = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(module, child_name, UnfusedMultiheadAttention.from_mha(child))
                replaced += 1
        if _is_timm_fused(module):
            if any(getattr(module, b, None) is not None for b in ("q_bias", "v_bias")):
                raise LoraError(
                    f"attention {name!r} keeps its q/v biases outside the fused qkv layer; "
                    "unfusing it is not supported"
                )
            module.qkv = SplitQKV.from_linear(module.qkv)
            replaced += 1
    return replaced


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _separate_projections(module: nn.Module) -> dict[str, str] | None:
    """q/k/v/o child names of an attention that already owns one linear layer per projection.

    transformers' ViT and DINOv2 (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``) and CLIP
    (``out_proj``) are built that way: peft targets those layers directly, nothing is unfused.
    """
    if isinstance(module, UnfusedMultiheadAttention):
        return None
    children = dict(module.named_children())
    out = "o_proj" if "o_proj" in children else "out_proj"
    names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": out}
    if all(isinstance(children.get(n), nn.Linear) for n in names.values()):
        return names
    return None


def _bert_projections(module: nn.Module) -> dict[str, str] | None:
    """q/k/v/o names inside a transformers BERT attention (``self.query``, ``self.key``,
    ``self.value``, ``output.dense``), or None for any other module."""
    names = {"q": "self.query", "k": "self.key", "v": "self.value", "o": "output.dense"}
    try:
        layers = [module.get_submodule(n) for n in names.values()]
    except AttributeError:
        return None
    return names if all(isinstance(layer, nn.Linear) for layer in layers) else None


def target_module_names(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Full names of the linear layers for ``targets`` (subset of q, k, v, o) in an unfused model.

    Raises:
        LoraError: unknown target, or no unfused attention in ``model``.
    """
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise LoraError(f"unknown LoRA target(s) {unknown}; valid targets: {', '.join(TARGETS)}")
    names = []
    for name, module in model.named_modules():
        if isinstance(module, UnfusedMultiheadAttention):
            parts = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}
            names += [_join(name, parts[t]) for t in targets]
        elif isinstance(getattr(module, "qkv", None), SplitQKV):
            parts = {"q": "qkv.q_proj", "k": "qkv.k_proj", "v": "qkv.v_proj", "o": "proj"}
            names += [_join(name, parts[t]) for t in targets]
        elif (parts := _separate_projections(module) or _bert_projections(module)) is not None:
            names += [_join(name, parts[t]) for t in targets]
    if not names:
        raise LoraError("no unfused attention found: call unfuse_attention(model) first")
    return names
