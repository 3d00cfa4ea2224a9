"""The fast profile's check that every embedcyto module is imported by some fast test."""

from __future__ import annotations

from module_imports import embedcyto_modules, never_imported


def test_every_module_file_is_listed_with_its_dotted_name():
    names = embedcyto_modules()
    assert {"embedcyto", "embedcyto.__main__", "embedcyto.probes", "embedcyto.probes.knn",
            "embedcyto.cli.main"} <= set(names)
    assert len(names) == len(set(names)) and not any(n.endswith("__init__") for n in names)


def test_a_module_nobody_imported_is_named():
    names = embedcyto_modules()
    loaded = {name: object() for name in names if name != "embedcyto.probes.knn"}
    assert never_imported(loaded) == ["embedcyto.probes.knn"]
    assert never_imported({n: object() for n in names}) == []
