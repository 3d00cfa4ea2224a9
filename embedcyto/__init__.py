"""embedcyto: which vision foundation model for your cytology task, and does fine-tuning pay off?

The public API is deliberately small; everything else lives in the sub-packages.
Heavy libraries (torch, open_clip, timm, peft) are imported only when a function needs them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_features"]


def load_features(*args, **kwargs):
    """Read cached embeddings and their metadata from a feature store.

    ``load_features("sipakmed", "quilt")`` (a dataset and a model name) reads the store from the
    workspace's store folder (or ``$EMBEDCYTO_STORE``, else ``./cache``); a ``.h5`` path, or a
    store folder with the dataset and model, names one explicitly. See
    :func:`embedcyto.store.load_features` for the other arguments.
    """
    from pathlib import Path

    from embedcyto.store import load_features as _load

    if (len(args) == 2 and all(isinstance(a, str) for a in args) and "store_dir" not in kwargs
            and not args[0].endswith(".h5") and not Path(args[0]).expanduser().exists()):
        return _load(None, args[0], args[1], **kwargs)
    return _load(*args, **kwargs)
