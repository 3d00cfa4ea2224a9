"""Probes on cached embeddings: scikit-learn estimators, few-shot episodes and the probe grid.

Everything here works on arrays; :mod:`embedcyto.probes.runner` is the only module that reads
feature stores. The methods are rows of :mod:`embedcyto.probes.registry`. The estimators are
imported on first use, so reading the registry (the CLI, the report) imports no scikit-learn;
torch is imported only inside :meth:`StudyLinearHead.fit`.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "KNNProbe": "embedcyto.probes.knn",
    "LinearProbe": "embedcyto.probes.linear",
    "ProtoNet": "embedcyto.probes.fewshot",
    "SimpleShot": "embedcyto.probes.fewshot",
    "StudyLinearHead": "embedcyto.probes.torch_head",
    "run_episodes": "embedcyto.probes.episodes",
    "support_ids": "embedcyto.probes.episodes",
    "support_indices": "embedcyto.probes.episodes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'embedcyto.probes' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
