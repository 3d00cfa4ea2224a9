"""Workspaces ``embedcyto init`` writes: an empty one, and the study's (Dausort et al.).

The study's workspace names its four datasets (roots under ``data/``, to be edited or filled),
its five backbones, and its two LoRA experiments as plans: few-shot runs of every model on every
dataset (Experiment 2) and CLIP ViT-L/14 on growing fractions of HiCervix (Experiment 3: seed 1,
rank 16 on q, k, v and the output projection, learning rate 1e-3; docs/reproduce.md).
"""

from __future__ import annotations

from pathlib import Path

from embedcyto.workspace.config import DatasetEntry, LoraPlan, Workspace

STUDY_DATASETS = ("bcfc", "mlcc", "sipakmed", "hicervix")
STUDY_MODELS = ("clip", "vit", "biomedclip", "quilt", "uni")
STUDY_SHOTS = (1, 2, 4, 8, 16)
STUDY_FRACTIONS = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
STUDY_SEEDS = (1, 2, 3)


def empty_workspace(base: Path) -> Workspace:
    """No datasets, no models: the user adds them with ``datasets add`` and ``models add``."""
    return Workspace(base=Path(base).resolve())


def study_workspace(base: Path, data_root: str = "data") -> Workspace:
    """The study's datasets, models and LoRA experiments (roots ``<data_root>/<dataset>``)."""
    datasets = tuple(DatasetEntry(name=name, layout=name, root=f"{data_root}/{name}")
                     for name in STUDY_DATASETS)
    plans = (
        LoraPlan(name="fewshot", models=STUDY_MODELS, shots=STUDY_SHOTS, seeds=STUDY_SEEDS),
        LoraPlan(name="fractions", models=("clip-l14",), datasets=("hicervix",),
                 fractions=STUDY_FRACTIONS, seeds=(1,),
                 settings={"rank": 16, "targets": ["q", "k", "v", "o"], "lr": 0.001}),
    )
    return Workspace(base=Path(base).resolve(), models=STUDY_MODELS, datasets=datasets,
                     lora=plans)
