"""Make pure-Python torchvision importable beside a CPU-only torch.

open_clip and timm import torchvision at import time. On machines where pip paired the CPU
build of torch with a CUDA build of torchvision, importing torchvision fails with
``RuntimeError: operator torchvision::nms does not exist``: its compiled operators cannot load,
and its fake-tensor registrations then point at operators that were never defined.

embedcyto needs none of torchvision's compiled operators (images are decoded with PIL), only its
pure-Python transforms. So, when and only when that exact failure happens, this module defines
the two missing operator schemas and imports torchvision again. Where torchvision loads normally
it does nothing at all. Calling :func:`ensure_torchvision` twice is harmless.
"""

from __future__ import annotations

import sys

_MISSING_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_patched = False
_library = None  # keeps the torch.library fragment alive for the life of the process


def _forget_torchvision() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def _define_missing_schemas() -> None:
    global _library
    import torch

    _library = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _MISSING_OPS.items():
        if not torch._C._dispatch_has_kernel(f"torchvision::{name}") and not _has_schema(name):
            _library.define(schema)


def _has_schema(name: str) -> bool:
    import torch

    try:
        torch._C._get_schema(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def ensure_torchvision() -> bool:
    """Import torchvision, repairing the CPU-torch/CUDA-torchvision mismatch if needed.

    Returns:
        True when the repair was applied, False when torchvision imported normally (or is
        absent, in which case the importing library will report it itself).
    """
    global _patched
    if "torchvision" in sys.modules and not _patched:
        return False
    try:
        import torchvision  # noqa: F401
    except ModuleNotFoundError:
        return False
    except RuntimeError as err:
        if "torchvision::" not in str(err) or "does not exist" not in str(err):
            raise
        _forget_torchvision()
        _define_missing_schemas()
        import torchvision  # noqa: F401,F811

        _patched = True
    return _patched
