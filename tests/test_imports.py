"""The framework-free layers import without Lightning, each in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

# The layers that must not pull in Lightning; add a module name here to cover it.
LIGHTNING_FREE = [
    "lightning_landscape",
    "lightning_landscape.curvature",
    "lightning_landscape.landscape",
]
LIGHTNING_MODULES = ("lightning", "pytorch_lightning", "lightning_fabric")


@pytest.mark.parametrize("module", LIGHTNING_FREE)
def test_imports_without_lightning(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {LIGHTNING_MODULES!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", f"importing {module} imported {out.stdout.strip()}"


def test_top_level_names_resolve_lazily() -> None:
    import lightning_landscape

    for name in lightning_landscape.__all__:
        assert getattr(lightning_landscape, name) is not None, name
    from lightning_landscape import HessianEigenMonitor
    from lightning_landscape.callbacks import HessianEigenMonitor as direct

    assert HessianEigenMonitor is direct
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = lightning_landscape.nope  # type: ignore[attr-defined]


def test_type_checking_imports_name_exactly_the_public_names() -> None:
    # The public names are listed once in __all__; the TYPE_CHECKING block repeats them for static type
    # checkers only. Both must agree, and each import must name where __getattr__ finds the object.
    import ast
    import importlib

    import lightning_landscape

    tree = ast.parse(open(lightning_landscape.__file__).read())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
    )
    typed = {
        alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert sorted(typed) == sorted(n for n in lightning_landscape.__all__ if n != "__version__")
    assert len(set(lightning_landscape.__all__)) == len(lightning_landscape.__all__)
    for name, module in typed.items():
        assert getattr(importlib.import_module(str(module)), name) is getattr(lightning_landscape, name), name


def test_curvature_and_landscape_names_resolve_without_lightning() -> None:
    code = (
        "import sys, lightning_landscape as ll\n"
        "ll.hessian_eigenvalues, ll.loss_line, ll.random_directions\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {LIGHTNING_MODULES!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout.strip()
