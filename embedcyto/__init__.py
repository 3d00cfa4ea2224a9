"""embedcyto: which vision foundation model for your cytology task, and does fine-tuning pay off?

The public API is deliberately small; everything else lives in the sub-packages.
Heavy libraries (torch, open_clip, timm, peft) are imported only when a function needs them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_features"]


def load_features(*args, **kwargs):
    """Read cached embeddings and their metadata from a feature store.

    See :func:`embedcyto.store.load_features` for the arguments.
    """
    from embedcyto.store import load_features as _load

    return _load(*args, **kwargs)
