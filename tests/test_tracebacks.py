"""The traceback check used by the torchrun tests matches only embedcyto's own source files."""

from __future__ import annotations

import re
from pathlib import Path

from tracebacks import own_frames


def test_a_venv_inside_a_clone_named_embedcyto_is_not_the_package(tmp_path):
    clone = tmp_path / "embedcyto"
    package = clone / "embedcyto"
    venv_frame = f'  File "{clone}/.venv/lib/python3.12/site-packages/torch/distributed/run.py", line 9'
    own_frame = f'  File "{package}/extract.py", line 3, in extract_features'
    stderr = "Traceback (most recent call last):\n" + venv_frame + "\n"
    assert re.search(r'File ".*/embedcyto/', stderr)  # the pattern the tests used to rely on
    assert own_frames(stderr, package) == []
    assert own_frames(stderr + own_frame + "\n", package) == [own_frame]


def test_the_helper_anchors_on_the_installed_package():
    import embedcyto

    real = Path(embedcyto.__file__).resolve().parent
    frame = f'  File "{real}/cli/main.py", line 1, in main'
    assert own_frames(frame) == [frame]
