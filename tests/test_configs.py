"""The shared config helpers: strict from_dict and the one "what differs" message."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from embedcyto.configs import differences, from_dict, what_differs
from embedcyto.errors import LoraError


@dataclass(frozen=True)
class _Toy:
    a: int = 1
    b: str = "x"


def test_from_dict_builds_and_refuses_unknown_keys_and_non_objects():
    assert from_dict(_Toy, {"a": 3}) == _Toy(a=3)
    with pytest.raises(LoraError, match=r"unknown knob\(s\) \['c'\]; valid: \['a', 'b'\]"):
        from_dict(_Toy, {"c": 1}, error=LoraError, what="knob")
    with pytest.raises(LoraError, match="expected a JSON object, got list"):
        from_dict(_Toy, [1], error=LoraError)


def test_what_differs_lists_only_the_changed_keys_innermost_first():
    old = {"lr": 0.001, "warmup": None, "settings": {"rank": 2, "targets": ["q", "v"]},
           "seed": 1}
    new = {"lr": 0.02, "warmup": None, "settings": {"rank": 16, "targets": ["q", "v"]},
           "seed": 1, "epochs": 100}
    assert what_differs(old, new) == ("epochs: <missing> -> 100; lr: 0.001 -> 0.02; "
                                      "settings.rank: 2 -> 16")
    assert differences(old, old) == []
