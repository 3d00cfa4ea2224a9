"""Probes on cached embeddings: scikit-learn estimators, few-shot episodes and the probe grid.

Everything here works on arrays; :mod:`embedcyto.probes.runner` is the only module that reads
feature stores. torch is imported only inside :meth:`StudyLinearHead.fit`.
"""

from __future__ import annotations

from embedcyto.probes.episodes import run_episodes, support_ids, support_indices
from embedcyto.probes.fewshot import ProtoNet, SimpleShot
from embedcyto.probes.knn import KNNProbe
from embedcyto.probes.linear import LinearProbe
from embedcyto.probes.torch_head import StudyLinearHead

__all__ = [
    "KNNProbe",
    "LinearProbe",
    "ProtoNet",
    "SimpleShot",
    "StudyLinearHead",
    "run_episodes",
    "support_ids",
    "support_indices",
]
