"""embedcyto: which vision foundation model for your cytology task, and does fine-tuning pay off?

The public API is deliberately small; everything else lives in the sub-packages.
Heavy libraries (torch, open_clip, timm, peft) are imported only when a function needs them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_features"]


def load_features(store=None, dataset=None, model=None, *, split=None, store_dir=None,
                  mmap=False):
    """Read cached embeddings and their metadata from a feature store.

    Same parameters as :func:`embedcyto.store.load_features` (a test keeps the two signatures
    equal); spelled out here so ``help()`` and IDEs show them while h5py is imported on first use.

    Args:
        store: a ``.h5`` store file, or a store folder (then ``dataset`` and ``model`` are
            required). None: ``store_dir`` or the default folder (``EMBEDCYTO_STORE``, the
            workspace's store folder, else ``./cache``). ``load_features("pap", "quilt")`` - a
            dataset and a model name - reads that store from the default folder.
        dataset: dataset name (or a ``Dataset``).
        model: model name.
        split: keep only this split's rows.
        store_dir: the store folder when ``store`` is None.
        mmap: map the features from disk instead of reading them.

    Returns:
        :class:`embedcyto.store.Features`.
    """
    from pathlib import Path

    from embedcyto.store import load_features as _load

    if (isinstance(store, str) and isinstance(dataset, str) and model is None
            and store_dir is None and not store.endswith(".h5")
            and not Path(store).expanduser().exists()):
        store, dataset, model = None, store, dataset  # load_features("pap", "quilt")
    return _load(store, dataset, model, split=split, store_dir=store_dir, mmap=mmap)
