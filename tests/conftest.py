"""Shared test set-up: offline hub clients, quiet threads, tiny generated datasets."""

from __future__ import annotations

import os
import sys

# The hub clients retry for tens of seconds without this; tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_hf_home(tmp_path_factory, monkeypatch):
    """Give each test an empty Hugging Face cache: neither a developer's cache nor another
    test's fake one can leak in."""
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("EMBEDCYTO_WEIGHTS", raising=False)
    monkeypatch.delenv("EMBEDCYTO_STORE", raising=False)


def pytest_collection_modifyitems(config, items):
    """Full-size giant models run only when asked for with ``-m giant`` (see docs/models.md)."""
    if "giant" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="full-size model card; run with `pytest -m giant`")
    for item in items:
        if "giant" in item.keywords:
            item.add_marker(skip)


_WORKER_MODULES: set[str] = set()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist: collect the modules each worker imported (``-n 2``)."""
    _WORKER_MODULES.update(getattr(node, "workeroutput", {}).get("embedcyto_modules", ()))


def pytest_sessionfinish(session, exitstatus):
    """The fast profile (``pytest -m "not slow"`` over all of tests/) fails if some embedcyto
    module was never imported by its tests: every module keeps a test outside ``slow``."""
    from module_imports import never_imported, whole_fast_profile

    if not whole_fast_profile(session.config):
        return
    if hasattr(session.config, "workerinput"):  # a pytest-xdist worker: report to the controller
        session.config.workeroutput["embedcyto_modules"] = [
            m for m in sys.modules if m == "embedcyto" or m.startswith("embedcyto.")]
        return
    loaded = set(sys.modules) | _WORKER_MODULES
    missing = never_imported(loaded)
    if missing:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = ("fast profile: no test outside `slow` imports "
                   f"{', '.join(missing)}; add a fast test for each")
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
