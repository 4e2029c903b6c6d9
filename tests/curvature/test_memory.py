"""Memory budgets: the free bytes of a device and the bytes autograd saves, against closed forms."""

from __future__ import annotations

import torch

from lightning_landscape.curvature._memory import SavedBytes, available_bytes


def test_saved_bytes_counts_each_storage_once() -> None:
    # y = x * w saves x and w (two float64 storages of 1000 entries); z = y * w saves y and w again.
    x = torch.randn(1000, dtype=torch.float64)
    w = torch.randn(1000, dtype=torch.float64, requires_grad=True)
    counter = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        y = x * w
        (y * w).sum()
    assert counter.nbytes == 3 * 1000 * 8  # x, w and y; w counted once
    assert SavedBytes.unpack(x) is x


def test_available_bytes_of_the_cpu_is_positive() -> None:
    assert available_bytes(torch.device("cpu")) > 0
