"""Import paths given as strings resolve, or fail naming the argument."""

from __future__ import annotations

import math

import pytest

from lightning_landscape._imports import import_object


def test_both_spellings_resolve_dotted_attributes() -> None:
    assert import_object("math:pi", "x") == math.pi
    assert import_object("math.pi", "x") == math.pi
    assert import_object("os.path:join", "x").__name__ == "join"


@pytest.mark.parametrize("bad", ["", "nodots", 3, "math:", ":pi"])
def test_malformed_paths_name_the_argument(bad: object) -> None:
    with pytest.raises(ValueError, match=r"`loss_fn` must be an import path like 'pkg\.module:function'"):
        import_object(bad, "loss_fn", example="pkg.module:function")


def test_unimportable_paths_say_why() -> None:
    with pytest.raises(ValueError, match=r"`loss_fn`='math:nope' could not be imported"):
        import_object("math:nope", "loss_fn")
