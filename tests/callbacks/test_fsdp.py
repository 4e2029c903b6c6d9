"""The monitors under Lightning's ``ModelParallelStrategy`` with ``fully_shard`` (FSDP2) on 2 gloo
processes: the logged values equal those of one process over both ranks' batches (within the
finite-difference tolerance), training is bit-identical with and without them, and what cannot run sharded
is refused before the first step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.multiprocessing as mp
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_landscape import EdgeOfStabilityMonitor, HessianEigenMonitor, LossLandscapeMonitor
from tests.callbacks import _fsdp_monitors as worker
from tests.callbacks._cb_helpers import TinyRegression, make_loader
from tests.curvature.operators.test_ddp import free_port

# float64 finite-difference products (tests/curvature/operators/test_hvp_methods.py): measured <= 4.2e-9
# relative on the eigenvalues here, and the two runs' weights differ by rounding only (<= 1e-15).
FD_RTOL = 1e-6


def single_process(cls: type[TinyRegression], callbacks: list[pl.Callback], tmp_path: Path) -> Any:
    pl.seed_everything(11)
    recorder = worker.Recorder()
    model = cls()
    worker.fit(model, callbacks, make_loader(n=48, batch_size=8), recorder, default_root_dir=tmp_path)
    return recorder.values, worker.weights(model), worker.landscapes(callbacks)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_monitors_under_fully_shard_match_one_process(tmp_path: Path) -> None:
    mp.spawn(worker.run, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    sgd, sgd_weights, sgd_landscapes = single_process(TinyRegression, worker.monitors(), tmp_path)
    adam, adam_weights, _ = single_process(
        worker.AdamRegression, [EdgeOfStabilityMonitor(every_n_steps=2, tol=1e-9)], tmp_path
    )
    assert sorted(sgd) == sorted(adam) == [1, 3, 5]  # the logging steps of global steps 2, 4, 6
    assert {"hessian/eig_2", "hessian/eig_min", "hessian/trace", "hessian/net.0/eig_1"} <= set(sgd[1])
    assert "stability/sharpness" in sgd[1] and "stability/sharpness" in adam[1]
    assert "landscape/center_loss" in sgd[5] and len(sgd_landscapes) == 2
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert got["sgd_sharded"] and got["adam_sharded"]
        for key, want in (("sgd", sgd), ("adam", adam)):
            if rank == 1:  # global rank zero logs
                assert got[key] == {}, key
                continue
            assert sorted(got[key]) == sorted(want), key
            for step, values in want.items():
                assert set(got[key][step]) == set(values), (key, step)
                for tag, value in values.items():
                    exact = tag.endswith(("converged", "num_products", "threshold"))
                    tol = {"rel": 0, "abs": 0} if exact else {"rel": FD_RTOL, "abs": 1e-12}
                    assert got[key][step][tag] == pytest.approx(value, **tol), (key, step, tag)
        for mine, want in zip(got["sgd_landscapes"], sgd_landscapes, strict=True):
            # Random line: exact losses (float64, another order); Hessian plane: eigenvectors to FD accuracy.
            torch.testing.assert_close(mine["losses"], want["losses"], rtol=0, atol=1e-8)
            if want["curvature"] is not None:
                assert mine["curvature"] == pytest.approx(want["curvature"], rel=FD_RTOL)
        # Training with the monitors is bit-identical to training without them.
        for a, b in zip(got["sgd_weights"], got["plain_weights"], strict=True):
            assert torch.equal(a, b)
        torch.testing.assert_close(got["sgd_weights"], sgd_weights, rtol=0, atol=1e-14)
        torch.testing.assert_close(got["adam_weights"], adam_weights, rtol=0, atol=1e-14)
        refused = got["refused"]
        assert "`hvp`='double_backward' cannot run under FSDP" in refused["double_backward"]
        assert "`backend`='pyhessian' cannot run under FSDP" in refused["pyhessian"]
        assert "`batch_sharpness`=True cannot run under FSDP" in refused["batch_sharpness"]
        assert "`trajectory`=True cannot run under FSDP" in refused["trajectory"]
        assert "`sharpness_rho`=0.1 cannot run under FSDP" in refused["adaptive"]
        assert "only plain FSDP" in refused["sub_mesh"] and "mesh of shape (1,)" in refused["sub_mesh"]


@pytest.mark.parametrize(
    ("strategy", "why"), [(FSDPStrategy, "FSDPStrategy (FSDP1): it flattens"), (DeepSpeedStrategy, "ZeRO")]
)
@pytest.mark.parametrize("monitor", [HessianEigenMonitor, EdgeOfStabilityMonitor, LossLandscapeMonitor])
def test_fsdp1_and_deepspeed_are_refused_in_setup_naming_what_to_use(
    monitor: type[pl.Callback], strategy: type[Any], why: str
) -> None:
    # Lightning runs FSDPStrategy on CUDA only and DeepSpeedStrategy needs the deepspeed package: the strategy
    # is put into a CPU Trainer unbuilt, as tests/test__namespace.py does.
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    trainer._accelerator_connector.strategy = object.__new__(strategy)
    with pytest.raises(MisconfigurationException) as err:
        monitor().setup(trainer, TinyRegression(), "fit")
    message = str(err.value)
    assert message.startswith(f"{monitor.__name__} does not support") and why in message
    assert "ModelParallelStrategy with torch.distributed.fsdp.fully_shard" in message
    assert "strategy='ddp'" in message
