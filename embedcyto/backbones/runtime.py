"""Choosing the device, the numeric precision and the decoding workers a backbone runs with.

bf16 is the default wherever the hardware has bf16 matrix units: CUDA GPUs, and CPUs with AMX or
AVX512-BF16 (there bf16 weights run about 5x faster than fp32 with cosine similarity >= 0.9999).
Elsewhere fp32 is the safe default: emulated bf16 is slower than fp32.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from pathlib import Path

import torch

from embedcyto.errors import BackboneError

PRECISIONS = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def cpu_has_bf16_units(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises bf16 matrix instructions (AMX-BF16 or AVX512-BF16).

    Only Linux exposes the flags; elsewhere this answers False and fp32 is used.
    """
    path = Path(cpuinfo)
    if not path.is_file():
        return False
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return any(flag in flags for flag in _CPU_BF16_FLAGS)
    return False


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; an explicit CUDA request must be satisfiable."""
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as err:
        raise BackboneError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise BackboneError(
                f"device {device!r} asked for but torch sees no CUDA GPU "
                f"(torch {torch.__version__}); use `device='cpu'` or install a CUDA build of torch"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise BackboneError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    elif resolved.type not in ("cpu", "mps"):
        raise BackboneError(f"device type {resolved.type!r} is not supported; use cpu or cuda")
    return resolved


def resolve_precision(precision: str, device: str | torch.device) -> torch.dtype:
    """The parameter dtype for ``precision`` on ``device``.

    Args:
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (long names accepted).
        device: The device the model will run on.

    Raises:
        BackboneError: unknown precision, or fp16 on a CPU (slow and numerically fragile there).
    """
    device = resolve_device(device)
    name = str(precision).strip().lower()
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_bf16_units():
            return torch.bfloat16
        return torch.float32
    if name not in PRECISIONS:
        raise BackboneError(
            f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16"
        )
    dtype = PRECISIONS[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise BackboneError("fp16 is not supported on the CPU; use `precision='bf16'` or "
                            "`precision='fp32'`")
    return dtype


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Run torch on ``n`` threads inside the block, restoring the previous count afterwards.

    Tiny models are dominated by thread start-up and spinning: on a busy 2-core machine a
    ``tiny-clip`` forward pass took 0.3 s on two threads and 7 ms on one.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_workers(requested: int | None = None) -> int:
    """Image-decoding processes: ``requested``, else ``min(4, CPUs - 1)``.

    0 on a single core, where decoding in the main process is fastest; more than four rarely
    helps, because the model, not decoding, is then the bottleneck.
    """
    if requested is not None:
        return requested
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def exit_with_parent(parent_pid: int, _worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: make a decoding worker die the moment its parent dies.

    Without it an orphaned worker lives on for seconds (until torch's watchdog notices) holding
    memory and CPU. On Linux the kernel sends SIGKILL to the worker when its parent exits
    (``prctl(PR_SET_PDEATHSIG)``); if the parent is already gone when the worker starts, the
    worker exits at once. Use as ``functools.partial(exit_with_parent, os.getpid())``.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the parent-pid check below and torch's watchdog remain
    if os.getppid() != parent_pid:
        os._exit(0)
