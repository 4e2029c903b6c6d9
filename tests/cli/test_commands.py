"""The ``lightning-landscape`` command: configs through the console script, multiseed, landscape, errors."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_landscape.callbacks import GradientNormMonitor, HessianEigenMonitor, RiskGapMonitor, tags
from lightning_landscape.cli.commands import LandscapeCLI, main
from lightning_landscape.landscape import LineResult, PlaneResult, loss_plane, random_directions
from lightning_landscape.multiseed import MultiSeedTrainer
from tests.callbacks._cb_helpers import TinyData, TinyRegression, mse_loss_fn

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
SCRIPT = Path(sys.executable).parent / "lightning-landscape"
MODEL = "tests.callbacks._cb_helpers.TinyRegression"
DATA = "tests.callbacks._cb_helpers.TinyData"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _run(args: list[str], cwd: Path = ROOT, timeout: int = 240) -> subprocess.CompletedProcess:
    assert SCRIPT.is_file(), f"{SCRIPT} missing: run `.venv/bin/pip install -e . --no-deps`"
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV
    )


def _tb_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    # In-process runs pass `args`; LightningCLI warns when sys.argv (pytest's) has arguments too.
    monkeypatch.setattr(sys, "argv", ["lightning-landscape"])


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"shallow_relu.yaml", "digits.yaml"}


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_runs_a_few_steps_through_the_console_script(tmp_path, config):
    proc = _run(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.max_steps=3",
            "--trainer.log_every_n_steps=1",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (version,) = list((tmp_path / "lightning_logs").iterdir())
    assert (version / "config.yaml").is_file()  # LightningCLI's SaveConfigCallback
    scalars = _tb_scalars(version)
    # Our callbacks from the YAML ran: one gradient norm per optimizer step, the epoch risk at the stop.
    assert [step for step, _ in scalars[tags.GRAD_NORM_TOTAL]] == [0, 1, 2]
    assert all(v > 0 for _, v in scalars[tags.GRAD_NORM_TOTAL])
    assert tags.RISK_TRAIN in scalars
    assert len(scalars["train_loss_step"]) == 3


def test_config_parses_with_our_callbacks_in_process(tmp_path):
    cli = LandscapeCLI(
        args=[
            "--config",
            str(ROOT / "configs" / "shallow_relu.yaml"),
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    kinds = [type(c) for c in cli.trainer.callbacks]
    assert {GradientNormMonitor, HessianEigenMonitor, RiskGapMonitor} <= set(kinds)
    hessian = next(c for c in cli.trainer.callbacks if isinstance(c, HessianEigenMonitor))
    assert (hessian.k, hessian.dataloader) == (2, "val")
    assert type(cli.model).__name__ == "ShallowReLU" and cli.model.hparams["hidden"] == [20]


@pytest.mark.slow
def test_a_wrong_yaml_fails_with_a_readable_message_before_training(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (ROOT / "configs" / "shallow_relu.yaml").read_text().replace("lr_halve_every:", "lr_halve_evry:")
    bad.write_text(text)
    proc = _run(["fit", "--config", str(bad), f"--trainer.default_root_dir={tmp_path / 'out'}"])
    assert proc.returncode != 0
    assert "lr_halve_evry" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("--model.init_args.init=kaiming", "kaiming"),  # not in the Literal: jsonargparse
        ("--data.init_args.target=cubic", "cubic"),
        ("--model.init_args.lr=-1", "`lr` must be a positive"),  # our own __init__ check
        ("--trainer.max_stepz=3", "max_stepz"),
        ("--data.init_args.batch_size=0", "`batch_size` must be a positive int"),
    ],
)
def test_wrong_options_and_values_exit_with_code_2_and_name_the_problem(tmp_path, capsys, override, expected):
    args = ["fit", "--config", str(ROOT / "configs" / "shallow_relu.yaml"), override]
    with pytest.raises(SystemExit) as info:
        main([*args, f"--trainer.default_root_dir={tmp_path}"])
    assert info.value.code == 2
    assert expected in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_callback_rejecting_its_value_fails_before_training(tmp_path, capsys):
    config = tmp_path / "cb.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning_landscape.HessianEigenMonitor\n"
        "      init_args:\n        k: 0\n"
        "model:\n  class_path: examples.shallow_relu.ShallowReLU\n"
        "data:\n  class_path: examples.shallow_relu.ShallowReLUDataModule\n"
    )
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "`k` must be an integer >= 1, got 0" in err
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (["--mode", "avg"], "avg"),
        (["--executor", "threads"], "threads"),
        (["--seeds", "0"], "`seeds` must be at least 1"),
        (["--monitor", "val_los"], "val_los"),  # never logged: found by the pre-flight, before any seed
    ],
)
def test_multiseed_rejects_bad_arguments_before_any_seed_trains(tmp_path, capsys, override, expected):
    args = [
        "multiseed",
        "--config",
        str(ROOT / "configs" / "shallow_relu.yaml"),
        "--trainer.max_steps=2",
        "--data.init_args.steps_per_epoch=2",
        "--data.init_args.batch_size=16",
        f"--root_dir={tmp_path / 'ms'}",
        *override,
    ]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert expected in capsys.readouterr().err
    assert not list(tmp_path.rglob("seed_*/**/*.ckpt"))


@pytest.mark.slow
def test_multiseed_from_the_command_line_prints_the_table_and_resumes(tmp_path):
    root = tmp_path / "ms"
    common = [
        "multiseed",
        "--config",
        str(ROOT / "configs" / "shallow_relu.yaml"),
        "--trainer.max_steps=20",
        "--data.init_args.steps_per_epoch=10",
        "--data.init_args.batch_size=64",
        "--monitor=val_loss",
        "--mode=min",
        f"--root_dir={root}",
        "--barriers=best",
    ]
    first = _run([*common, "--seeds=2"])
    assert first.returncode == 0, first.stderr[-4000:]
    summary = json.loads((root / "summary.json").read_text())
    runs = {r["seed"]: r for r in summary["runs"]}
    assert sorted(runs) == [0, 1] and all(r["status"] == "finished" for r in runs.values())
    for seed, run in runs.items():
        # The score is the best val_loss the seed logged to TensorBoard (independent read-back).
        val = [v for _, v in _tb_scalars(root / f"seed_{seed}")["val_loss"]]
        assert len(val) == 2
        assert run["score"] == pytest.approx(min(val), rel=1e-6)
        assert f"{run['score']:.6g}" in first.stdout
    best = min(runs.values(), key=lambda r: r["score"])
    assert f"best seed {best['seed']}" in first.stdout
    # --barriers reaches MultiSeedTrainer: the block and both figures are written.
    assert "barriers" in summary
    assert (root / "barriers.png").is_file() and (root / "interpolation.png").is_file()
    assert f"best checkpoint: {root / 'best.ckpt'}" in first.stdout and (root / "best.ckpt").is_file()
    # Every seed's Trainer had our callbacks from the YAML.
    assert tags.GRAD_NORM_TOTAL in _tb_scalars(root / "seed_0")
    stamps = {s: (root / f"seed_{s}" / "checkpoints" / "last.ckpt").stat().st_mtime_ns for s in runs}

    second = _run([*common, "--seeds=[0, 1, 2]"])
    assert second.returncode == 0, second.stderr[-4000:]
    assert "seed 2 finished" in second.stderr + second.stdout
    assert "seed 0 finished" not in second.stderr + second.stdout  # finished seeds are skipped
    for seed, stamp in stamps.items():
        assert (root / f"seed_{seed}" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == stamp
    summary = json.loads((root / "summary.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["finished"] * 3
    assert all(f"{r['score']:.6g}" in second.stdout for r in summary["runs"])


def test_every_multiseed_trainer_argument_is_a_multiseed_option_with_its_default(capsys):
    config = ROOT / "configs" / "shallow_relu.yaml"
    with pytest.raises(SystemExit) as info:
        main(["multiseed", "--config", str(config), "--print_config"])
    assert info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    # The config sections give these: the model's and data's init_args and the trainer section.
    given = {"model_kwargs", "datamodule_kwargs", "trainer_kwargs"}
    for name, param in inspect.signature(MultiSeedTrainer).parameters.items():
        if name in given:
            continue
        assert name in printed, f"MultiSeedTrainer's `{name}` is no `multiseed` option"
        if name == "root_dir":  # unset: <trainer.default_root_dir>/multiseed, which is the default here
            assert printed[name] is None and param.default == "multiseed"
            continue
        assert printed[name] == param.default, name
    assert {"max_retries", "still_improving_fraction"} <= set(printed)


def test_multiseed_options_reach_multiseed_trainer(tmp_path, monkeypatch):
    seen = {}

    def stop(self, *args, **kwargs):  # the configuration is complete here; no seed needs to train
        seen["config"] = self.config
        raise ValueError("stopped after the configuration")

    monkeypatch.setattr(MultiSeedTrainer, "fit", stop)
    args = ["multiseed", "--config", str(ROOT / "configs" / "shallow_relu.yaml"), "--trainer.max_steps=2"]
    options = ["--seeds=[3, 1]", "--max_retries=1", "--still_improving_fraction=0.25", "--barriers=all"]
    with pytest.raises(SystemExit) as info:
        main([*args, f"--root_dir={tmp_path}", *options, "--barrier_tol=0.5", "--quiet=true"])
    assert info.value.code == 2
    config = seen["config"]
    assert config.seed_list == [3, 1] and config.max_retries == 1 and config.still_improving_fraction == 0.25
    assert config.barriers_which == "all" and config.barrier_tol == 0.5 and config.quiet is True
    assert config.root_dir == str(tmp_path) and config.trainer_kwargs["max_steps"] == 2
    assert config.model_kwargs["hidden"] == [20]


def _checkpoint(tmp_path: Path) -> tuple[Path, TinyRegression]:
    torch.manual_seed(3)
    model = TinyRegression()
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "epoch": 0}, path)
    return path, model


def test_landscape_subcommand_writes_the_plane_of_the_checkpoint(tmp_path: Path) -> None:
    path, model = _checkpoint(tmp_path)
    out = tmp_path / "out"
    args = ["landscape", f"--model={MODEL}", f"--data={DATA}", f"--checkpoint={path}", "--steps=5"]
    LandscapeCLI(args=[*args, "--span=0.5", f"--out_dir={out}"])
    plane = PlaneResult.load(out / "landscape_plane.npz")
    assert (out / "landscape_plane.png").stat().st_size > 1000
    # Independently: the same directions (seed 0) and batch on the checkpoint's weights.
    batch = next(iter(TinyData().train_dataloader()))
    ref = loss_plane(
        model, mse_loss_fn, [batch], directions=random_directions(model, 2), span=(-0.5, 0.5), steps=5
    )
    torch.testing.assert_close(plane.losses, ref.losses, atol=1e-12, rtol=0)

    LandscapeCLI(args=[*args, "--mode=line", "--directions=hessian", f"--out_dir={out}"])
    line = LineResult.load(out / "landscape_line.npz")
    assert line.losses.shape == (5,) and line.curvature is not None and line.curvature > 0


@pytest.mark.parametrize("content", ["other model", "missing", "not a checkpoint"])
def test_landscape_subcommand_refuses_a_checkpoint_it_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    path = tmp_path / "other.ckpt"
    if content == "other model":
        torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
    elif content == "not a checkpoint":
        path.write_text("not a checkpoint")
    with pytest.raises(SystemExit) as exc:
        LandscapeCLI(args=["landscape", f"--model={MODEL}", f"--data={DATA}", f"--checkpoint={path}"])
    assert exc.value.code == 2
    assert str(path) in capsys.readouterr().err
