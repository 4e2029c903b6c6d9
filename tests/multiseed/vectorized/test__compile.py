"""What the compiled step needs: whether inductor can run here, and the fused optimizer with its fallback."""

from __future__ import annotations

import shutil

import pytest
import torch

from lightning_landscape._torch import functorch_config
from lightning_landscape.multiseed.vectorized._compile import (
    compile_unavailable,
    fused_optimizer,
    recompute_masks,
)


def test_compile_unavailable_names_the_missing_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    assert compile_unavailable(torch.device("meta")) == (
        "torch.compile is not attempted on device type 'meta' (only cpu and cuda)"
    )
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    reason = compile_unavailable(torch.device("cpu"))
    assert reason is not None and "C++ compiler" in reason and "no-such-compiler" in reason
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name if name == "g++" else None)
    assert compile_unavailable(torch.device("cpu")) is None


def test_fused_optimizer_is_fused_where_the_kernel_exists_and_plain_elsewhere() -> None:
    params = [torch.zeros(3, requires_grad=True)]
    fused = fused_optimizer(torch.optim.Adam, params, lr=0.1)
    assert isinstance(fused, torch.optim.Adam) and fused.defaults["fused"] is True
    plain = fused_optimizer(torch.optim.Adamax, params, lr=0.1)  # Adamax has no fused kernel
    assert isinstance(plain, torch.optim.Adamax) and "fused" not in plain.defaults


def test_recompute_masks_patches_the_partitioner_only_inside_the_block() -> None:
    config = functorch_config()
    before = config.aggressive_recomputation
    with recompute_masks():
        assert config.aggressive_recomputation is True
    assert config.aggressive_recomputation == before
