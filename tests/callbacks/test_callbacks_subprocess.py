"""The callbacks across process boundaries: LightningCLI from the command line, DDP on 2 CPU processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_landscape import HessianEigenMonitor, RiskGapMonitor
from lightning_landscape.callbacks import tags as _tags
from tests.callbacks._cb_helpers import TinyRegression, make_loader
from tests.callbacks._events import read_scalars

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
def test_lightning_cli_adds_the_monitors_from_the_command_line(tmp_path: Path) -> None:
    code = (
        "from lightning.pytorch.cli import LightningCLI; import tests.callbacks._cb_helpers as h; "
        "LightningCLI(h.TinyRegression, h.TinyData)"
    )
    args = [
        "fit",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_steps=4",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.log_every_n_steps=1",
        "--trainer.logger=TensorBoardLogger",
        f"--trainer.logger.save_dir={tmp_path}",
        "--trainer.callbacks+=lightning_landscape.HessianEigenMonitor",
        "--trainer.callbacks.init_args.k=3",
        "--trainer.callbacks.init_args.every_n_steps=2",
        "--trainer.callbacks+=lightning_landscape.GradientNormMonitor",
        "--trainer.callbacks.init_args.norm_type=inf",
        "--trainer.callbacks+=lightning_landscape.RiskGapMonitor",
        "--trainer.callbacks.init_args.optimal_risk=0.0",
    ]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    scalars = read_scalars(tmp_path)
    assert sorted(scalars[_tags.hessian_eig_tag(3)]) == [1, 3]
    assert scalars[_tags.hessian_eig_tag(1)][3] >= scalars[_tags.hessian_eig_tag(3)][3]
    assert sorted(scalars[_tags.GRAD_NORM_TOTAL]) == [0, 1, 2, 3]


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    proc = subprocess.run(
        [sys.executable, str(HERE / "_ddp_hessian.py"), str(tmp_path / "ddp")],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Every rank took part in every probe.
    assert "rank 0 probes 3" in proc.stdout and "rank 1 probes 3" in proc.stdout, proc.stdout
    digests = re.findall(r"rank (\d) warm (\w+)", proc.stdout)
    assert len(digests) == 2 and digests[0][1] == digests[1][1] != "none", digests
    ddp = read_scalars(tmp_path / "ddp")

    pl.seed_everything(11)
    logger = TensorBoardLogger(tmp_path / "single", name="tb")
    monitor = HessianEigenMonitor(k=3, every_n_steps=2, smallest=True, num_batches=1, tol=1e-9)
    risk = RiskGapMonitor(val_key=None, optimal_risk=0.0)
    trainer = pl.Trainer(max_steps=6, callbacks=[monitor, risk], logger=logger, **trainer_kwargs)
    trainer.fit(TinyRegression(), make_loader(n=48, batch_size=8))
    single = read_scalars(logger.log_dir)

    tags = [_tags.hessian_eig_tag(i) for i in (1, 2, 3)] + [_tags.HESSIAN_EIG_MIN]
    for tag in tags:
        assert sorted(ddp[tag]) == sorted(single[tag]) == [1, 3, 5], tag
        for step, value in single[tag].items():
            assert ddp[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-8), (tag, step)
    # The epoch's training risk is the mean over both ranks' batches (each rank alone would differ).
    assert ddp[_tags.RISK_TRAIN] == {5: pytest.approx(single[_tags.RISK_TRAIN][5], rel=1e-6)}
    assert ddp[_tags.RISK_OPTIMALITY_GAP] == ddp[_tags.RISK_TRAIN]
