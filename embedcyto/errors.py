"""Exceptions that say what went wrong and how to fix it.

Every error embedcyto raises on purpose derives from :class:`EmbedcytoError`; the CLI turns them
into one clean message (no traceback). Anything else reaching the user is a bug.
"""

from __future__ import annotations

import re
from collections.abc import Callable

#: How a library message names a parameter to change: `name=value` (Python's spelling, right for
#: a Python caller; `name=` when any value will do). Front ends rewrite each into their own option
#: with :func:`with_options`: the CLI into the flags of the command that was run
#: (``embedcyto.cli.main.cli_wording``), the study's recipes into theirs.
PARAMETER = re.compile(r"`([a-z_][a-z0-9_]*)=([^`]*)`")


def with_options(message: str, option_for: Callable[[str, str, int], str | None]) -> str:
    """``message`` with every `name=value` replaced by ``option_for(name, value, at)`` (``at``:
    where it stands in the message; value without quotes); a None answer keeps it as written."""
    def rewrite(match: re.Match) -> str:
        found = option_for(match.group(1), match.group(2).strip("'\""), match.start())
        return match.group(0) if found is None else found

    return PARAMETER.sub(rewrite, message)


class EmbedcytoError(Exception):
    """Base class: the message names the problem and, where there is one, the fix."""


class DatasetError(EmbedcytoError):
    """A dataset root, layout, label file or split is not what was expected."""


class ImageReadError(DatasetError):
    """An image file cannot be decoded (corrupt, truncated, unsupported)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


class SplitError(DatasetError):
    """A split file is missing, malformed, or disagrees with the dataset."""


class BackboneError(EmbedcytoError):
    """Unknown card, or a model that cannot be built."""


class WeightsNotFoundError(BackboneError):
    """No weights for a card were found in any of the places looked."""

    def __init__(self, message: str, looked: tuple[str, ...] = ()):
        super().__init__(message)
        self.looked = tuple(looked)  # each place searched, with what was (not) found there


class StoreError(EmbedcytoError):
    """A feature store is missing, incomplete, stale, locked or malformed."""


class StaleStoreError(StoreError):
    """A store exists but was made from other inputs than the ones requested."""


class StoreLockedError(StoreError):
    """Another process is writing the store."""


class DamagedStoreError(StoreError):
    """A store fails its integrity checks (checksums, digests, shapes, finite values)."""


class ProbeError(EmbedcytoError):
    """A probe cannot run on the features given (missing split, mismatched stores...)."""


class SamplingError(ProbeError):
    """A per-class draw (few-shot supports, validation picks, fractions) that the images
    cannot satisfy, e.g. more shots than a class has. A :class:`ProbeError` because few-shot
    probes are where most users meet it; the LoRA stage reports it as a :class:`LoraError`."""


class LoraError(EmbedcytoError):
    """An impossible LoRA request (targets, shots, fraction) or a failed run."""


class ReportError(EmbedcytoError):
    """Result files that cannot be read or that cannot be summarised honestly."""
