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
