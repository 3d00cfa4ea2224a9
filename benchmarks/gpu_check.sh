#!/usr/bin/env bash
# Checks that need a CUDA GPU: every model card at full size (random weights) builds, has its
# declared parameter count and matches its library's own call, then a measured ms/image per card
# to set beside the estimates of `embedcyto models list`. Run from the repository root:
#     bash benchmarks/gpu_check.sh
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
"$PY" -m pytest -q -m giant tests/test_backbones_zoo_full.py
"$PY" - <<'PY'
import time
import torch
from embedcyto.backbones import build_backbone, list_cards
from embedcyto.backbones.cost import estimated_ms

for card in (c for c in list_cards() if not c.random):
    model = build_backbone(card, random_init=True, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(64, 3, card.input_size, card.input_size, device="cuda")
    with torch.no_grad():
        model(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
    ms = (time.perf_counter() - start) / (3 * 64) * 1e3
    print(f"{card.name:16s} measured {ms:7.3f} ms/image   estimated {estimated_ms(card, 'gpu'):7.3f}")
    del model
    torch.cuda.empty_cache()
PY
