"""Finding, hashing and reading a card's weights file.

Weights are looked for, in this order: an explicit path (``--weights``), the card's folder in the
local weights directory (``--weights-dir`` or ``EMBEDCYTO_WEIGHTS``, layout
``<weights_dir>/<card name>/<file>``), the Hugging Face cache, and finally the hub itself unless
``HF_HUB_OFFLINE`` is set. When all fail, :class:`WeightsNotFoundError` lists every place looked
and the exact commands that fetch the file. Environment variables are read when a function runs,
never at import.

Checkpoints are untrusted input: they are read with safetensors or
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
import urllib.parse
import zipfile
from pathlib import Path

from embedcyto.backbones.cards import Card
from embedcyto.errors import BackboneError, WeightsNotFoundError

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
WEIGHTS_ENV = "EMBEDCYTO_WEIGHTS"
_TRUE = {"1", "true", "yes", "on"}


# The first place searched: an explicit weights path (the CLI's --weights), absent.
NOT_GIVEN = "`weights=PATH`: not given"

def default_weights_dir() -> Path | None:
    """The local weights directory named by ``EMBEDCYTO_WEIGHTS``, or None when unset."""
    value = os.environ.get(WEIGHTS_ENV, "").strip()
    return Path(value).expanduser() if value else None


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks for no network access."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def pick_weights_file(folder: Path, preferred: tuple[str, ...] = ()) -> Path:
    """The weights file in ``folder``: a preferred name if present, else the only weights file.

    Raises:
        BackboneError: no weights file, or several and none of the preferred names.
    """
    for name in preferred:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(found) == 1:
        return found[0]
    listing = ", ".join(p.name for p in sorted(folder.iterdir())) or "nothing"
    if not found:
        raise BackboneError(
            f"{folder} holds no weights file ({'/'.join(WEIGHT_SUFFIXES)}); it holds: {listing}"
        )
    raise BackboneError(
        f"{folder} holds several weights files ({', '.join(p.name for p in found)}) and none is "
        f"named {' or '.join(preferred) or 'as expected'}; pass the file itself as `weights=PATH`"
    )


def _explicit(weights: str | Path) -> Path:
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return pick_weights_file(path)
    raise WeightsNotFoundError(f"weights path {path} does not exist")


def _hub_download(repo_id: str, filename: str, cache_dir: Path) -> str:
    """Download one file into the cache (kept separate so it can be replaced in tests)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo_id, filename=filename, cache_dir=str(cache_dir))


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub import errors

    types: list[type[BaseException]] = [OSError, ValueError, errors.EntryNotFoundError]
    types.append(errors.HfHubHTTPError)
    try:
        import httpx

        types.append(httpx.HTTPError)
    except ImportError:
        pass
    return tuple(types)


def _from_cache(card: Card, cache: Path) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for name in card.weights_files:
        hit = try_to_load_from_cache(card.hub_repo, name, cache_dir=str(cache))
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached, or None when a connection opens (or a proxy is set).

    Without this, the hub client retries for about a minute on a machine without network,
    filling the terminal with retry warnings before the "weights not found" message.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the proxy decides; let the client try
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urllib.parse.urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return f"{host}:{port} cannot be reached ({err.strerror or err})"
    return None


def _from_hub(card: Card, cache: Path, looked: list[str]) -> Path | None:
    unreachable = hub_unreachable()
    if unreachable:
        looked.append(f"Hugging Face hub: not tried, {unreachable}")
        return None
    errors = _hub_errors()
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # retry chatter; the outcome is reported below
    try:
        for name in card.weights_files:
            try:
                return Path(_hub_download(card.hub_repo, name, cache))
            except errors as err:  # each failure is reported in the final message
                text = str(err).strip()
                reason = text.splitlines()[0][:200] if text else type(err).__name__
                looked.append(f"Hugging Face hub {card.hub_repo}/{name}: {reason}")
    finally:
        hub_log.setLevel(level)
    return None


def resolve_weights(
    card: Card,
    weights: str | Path | None = None,
    *,
    weights_dir: str | Path | None = None,
    allow_download: bool = True,
) -> Path:
    """Find the weights file for ``card``.

    Args:
        card: The model card.
        weights: Explicit file, or folder holding one weights file. Checked first and alone:
            when given but wrong, the error says so rather than silently using another file.
        weights_dir: Local weights directory; defaults to ``EMBEDCYTO_WEIGHTS``. The card's
            file is looked for in ``<weights_dir>/<card.name>/``.
        allow_download: Try the hub last (unless ``HF_HUB_OFFLINE`` is set).

    Returns:
        Path of an existing weights file.

    Raises:
        WeightsNotFoundError: nothing found; the message lists the places and how to get it.
    """
    if weights is not None:
        return _explicit(weights)
    if card.random:
        raise WeightsNotFoundError(
            f"model {card.name!r} is a random-weight demonstration card: it has no weights to find"
        )
    looked = [NOT_GIVEN]
    wdir = Path(weights_dir).expanduser() if weights_dir else default_weights_dir()
    if wdir is None:
        looked.append(f"weights folder: none set (use `weights_dir=DIR` or {WEIGHTS_ENV})")
    elif (wdir / card.name).is_dir():
        return pick_weights_file(wdir / card.name, card.weights_files)
    else:
        looked.append(f"weights folder: {wdir / card.name} does not exist")
    if card.hub_repo and card.weights_files:
        cache = hf_cache_dir()
        hit = _from_cache(card, cache)
        if hit is not None:
            return hit
        looked.append(
            f"Hugging Face cache {cache}: no {card.hub_repo} file "
            f"({', '.join(card.weights_files)})"
        )
        if not allow_download:
            looked.append("Hugging Face hub: not tried (download not allowed here)")
        elif hub_offline():
            looked.append("Hugging Face hub: not tried, HF_HUB_OFFLINE is set")
        else:
            hit = _from_hub(card, cache, looked)
            if hit is not None:
                return hit
    raise WeightsNotFoundError(_not_found_message(card, looked, wdir), looked=tuple(looked))


def _not_found_message(card: Card, looked: list[str], wdir: Path | None) -> str:
    lines = [f"no weights found for model {card.name!r}. Looked in:"]
    if card.gated and card.hub_repo:
        lines[0] = (
            f"no weights found for model {card.name!r}, which is gated on the Hugging Face hub "
            f"({card.page}: accept its terms there, then `hf auth login`). Looked in:"
        )
    lines += [f"  {i}. {place}" for i, place in enumerate(looked, 1)]
    lines.append("To get them:")
    lines.extend(f"  - {step}" for step in weights_instructions(card, wdir))
    return "\n".join(lines)


def weights_instructions(card: Card, weights_dir: Path | None = None, *,
                         offer_weights_path: bool = True) -> list[str]:
    """The steps that put a card's weights where :func:`resolve_weights` will find them.

    ``offer_weights_path=False`` leaves out the "pass --weights PATH" step, for callers (the
    study's recipes) that have no such option.
    """
    steps = []
    if card.weights_help:
        steps.append(card.weights_help)
    if card.hub_repo and card.weights_files:
        repo, first = card.hub_repo, card.weights_files[0]
        if card.gated:
            steps.append(
                f"accept the licence at https://huggingface.co/{repo} (logged in), then run "
                "`hf auth login` (older clients: `huggingface-cli login`) with a read token"
            )
        target = weights_dir / card.name if weights_dir else Path("WEIGHTS_DIR") / card.name
        steps.append(
            f"`hf download {repo} {first} --local-dir {target}` (older clients: "
            f"`huggingface-cli download {repo} {first} --local-dir {target}`), then pass "
            f"`weights_dir={target.parent}` or set {WEIGHTS_ENV}={target.parent}"
        )
        steps.append(
            f"or fill the Hugging Face cache on a connected machine: `hf download {repo} {first}`"
        )
    if offer_weights_path:
        steps.append("or pass `weights=PATH` (a weights file, or a folder holding exactly one)")
    return steps


def search_plan(
    card: Card, weights: str | Path | None = None, *, weights_dir: str | Path | None = None
) -> list[str]:
    """Where :func:`resolve_weights` would look, in order, without touching the network."""
    if card.random:
        return ["none: random-weight demonstration card"]
    plan = [f"`weights={weights}`" if weights else "`weights=PATH` (not given)"]
    wdir = Path(weights_dir).expanduser() if weights_dir else default_weights_dir()
    plan.append(
        f"{wdir / card.name}/"
        if wdir
        else f"WEIGHTS_DIR/{card.name}/ (`weights_dir=DIR` or {WEIGHTS_ENV})"
    )
    if card.hub_repo:
        files = ", ".join(card.weights_files)
        plan.append(f"Hugging Face cache {hf_cache_dir()}: {card.hub_repo} ({files})")
        state = "off (HF_HUB_OFFLINE set)" if hub_offline() else "on"
        plan.append(f"Hugging Face hub {card.hub_repo}: download {state}")
    return plan


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, streamed (weights can be GBs), remembered while the file is unchanged."""
    path = Path(path).resolve()
    stat = path.stat()
    return _sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)


_TORCHSCRIPT_MESSAGE = (
    "{path} is a TorchScript archive (like OpenAI's original CLIP .pt files), which embedcyto "
    "does not execute; use the open_clip-format file from the card's hub repository instead "
    "(see `embedcyto models show NAME`)"
)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def _read_errors() -> tuple[type[BaseException], ...]:
    import pickle

    types: list[type[BaseException]] = [OSError, RuntimeError, ValueError, EOFError]
    types.append(pickle.UnpicklingError)
    try:
        from safetensors import SafetensorError

        types.append(SafetensorError)
    except ImportError:
        pass
    return tuple(types)


def read_state_dict(path: str | Path) -> dict:
    """Tensors of a checkpoint, read without running any code stored in it.

    Raises:
        BackboneError: unreadable file, a TorchScript archive, or no tensors inside.
    """
    import torch

    path = Path(path)
    if path.suffix != ".safetensors" and _is_torchscript(path):
        raise BackboneError(_TORCHSCRIPT_MESSAGE.format(path=path))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except _read_errors() as err:
        raise BackboneError(f"cannot read weights {path} safely: {err}") from err
    return _unwrap(state, path)


def _unwrap(state, path: Path) -> dict:
    import torch

    for key in ("state_dict", "model", "module", "teacher"):  # teacher: DINOv2 training files
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            inner = state[key]
            if inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                state = inner
                break
    if not isinstance(state, dict) or not state:
        raise BackboneError(f"{path} holds no state dict (got {type(state).__name__})")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise BackboneError(f"{path} holds no tensors")
    return tensors


def prepare_state_dict(state: dict, prefix: str = "") -> dict:
    """Strip a DataParallel ``module.`` prefix, then keep and strip ``prefix`` keys if present.

    A full CLIP checkpoint holds both towers; only the ``visual.`` keys belong to the image model.
    """
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if prefix and any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_strict(module, state: dict, *, what: str) -> None:
    """Load ``state`` into ``module``, refusing any missing, unexpected or mis-shaped key.

    Raises:
        BackboneError: the message lists the mismatches, so a wrong file is recognisable.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:
        parts = [f"weights do not fit {what}:"]
        groups = (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
        for label, keys in groups:
            if keys:
                shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
                parts.append(f"{len(keys)} {label} ({shown})")
        parts.append("Is this the checkpoint for this model? Check the file (`weights=PATH`) and "
                     "the card.")
        raise BackboneError(" ".join(parts))
    module.load_state_dict(state, strict=True)


def resolve_model_weights(card: Card, weights: str | Path | None = None,
                          weights_dir: str | Path | None = None, *,
                          random_init: bool = False) -> tuple[Path | None, str | None]:
    """(weights file, sha256) without building the model; (None, None) for random weights.

    Random weights are used when asked for, or for demonstration cards (``card.random``) given no
    ``weights``. Resolving (and hashing) before building lets a cache hit skip the model.
    """
    if random_init or (card.random and weights is None):
        return None, None
    path = resolve_weights(card, weights, weights_dir=weights_dir)
    return path, file_sha256(path)
