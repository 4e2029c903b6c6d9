"""glibc's malloc keeps large blocks only when asked, observed in a fresh interpreter through mallinfo2."""

from __future__ import annotations

import subprocess
import sys

import pytest

_ALLOCATOR_SCRIPT = r"""
import ctypes, sys
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset
from lightning_landscape.multiseed.vectorized import SeedEnsemble
from lightning_landscape.multiseed.vectorized._allocator import tune_cpu_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mmapped_bytes_while_holding_64mb() -> int:
    block = torch.empty(16 * 2**20)  # 64 MiB of float32
    held = libc.mallinfo2().hblkhd
    del block
    return held

tune = sys.argv[1] == "1"
before = mmapped_bytes_while_holding_64mb()
x = torch.rand(32, 1)
ensemble = SeedEnsemble("torch.nn.Linear", {"in_features": 1, "out_features": 1}, seeds=2,
                        tune_cpu_allocator=tune, compile=False)
Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False).fit(ensemble, DataLoader(TensorDataset(x, 2 * x), batch_size=16))
after_fit = mmapped_bytes_while_holding_64mb()
in_effect = tune_cpu_allocator()  # called directly: on glibc in effect from now on, whatever came before
print(before, after_fit, int(in_effect), mmapped_bytes_while_holding_64mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
@pytest.mark.parametrize("tune", [True, False])
def test_cpu_allocator_keeps_large_blocks_only_when_asked(tune: bool) -> None:
    # Process-wide malloc settings: observed in a fresh interpreter through glibc's own mallinfo2.
    out = subprocess.run(
        [sys.executable, "-c", _ALLOCATOR_SCRIPT, "1" if tune else "0"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    before, after, in_effect, after_direct_call = (int(v) for v in out.stdout.split()[-4:])
    assert before >= 64 * 2**20  # by default a 64 MiB block is mmapped (and unmapped when freed)
    if tune:
        assert after < 64 * 2**20  # kept on the heap for reuse
    else:
        assert after >= 64 * 2**20
    assert in_effect == 1
    assert after_direct_call < 64 * 2**20
