"""The ``lightning-landscape`` command: configs through the real console script, multiseed, errors, help."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from docstring_parser import DocstringStyle, parse

from lightning_landscape.callbacks import GradientNormMonitor, HessianEigenMonitor, RiskGapMonitor
from lightning_landscape.callbacks import tags as _tags
from lightning_landscape.cli import LandscapeCLI, format_result, main
from lightning_landscape.multiseed import MultiSeedResult, SeedRun

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
SCRIPT = Path(sys.executable).parent / "lightning-landscape"
CALLBACKS = (GradientNormMonitor, HessianEigenMonitor, RiskGapMonitor)
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


def _documented(cls: type) -> dict[str, str]:
    try:
        params = parse(inspect.getdoc(cls) or "", DocstringStyle.GOOGLE).params
    except Exception as err:  # docstring_parser.ParseError: jsonargparse then shows no descriptions either
        pytest.fail(f"{cls.__name__}'s docstring is not valid Google style, so --help loses it: {err}")
    return {p.arg_name: " ".join((p.description or "").split()) for p in params}


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
    assert [step for step, _ in scalars[_tags.GRAD_NORM_TOTAL]] == [0, 1, 2]
    assert all(v > 0 for _, v in scalars[_tags.GRAD_NORM_TOTAL])
    assert _tags.RISK_TRAIN in scalars
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


def test_help_documents_every_option_of_our_callbacks(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for cls in CALLBACKS:
        doc = _documented(cls)
        assert f"lightning_landscape.{cls.__name__}" in text
        for name, param in inspect.signature(cls).parameters.items():
            assert f"{name} (" in text, f"{cls.__name__}.{name} missing from --help"
            assert doc.get(name), f"{cls.__name__}.{name} has no description in its docstring"
            assert doc[name][:40] in text, f"{cls.__name__}.{name}: description missing from --help"
            if param.default is not param.empty:
                assert f"default: {param.default!r}" in text


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
    assert _tags.GRAD_NORM_TOTAL in _tb_scalars(root / "seed_0")
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


def test_format_result_lists_every_seed_and_the_best():
    runs = [
        SeedRun(seed=3, status="finished", score=0.5, wall_time=1.0),
        SeedRun(seed=4, status="failed", error="Traceback ...\nValueError: boom"),
        SeedRun(seed=5, status="finished", score=0.25, wall_time=2.0),
    ]
    result = MultiSeedResult(runs, "val_loss", "min", 5, 0.25, "/r/best.ckpt", "/r")
    text = format_result(result)
    lines = text.splitlines()
    assert any(line.split()[:3] == ["3", "finished", "0.5"] for line in lines)
    assert any(line.split()[:3] == ["5", "finished", "0.25"] and line.endswith("<- best") for line in lines)
    assert "error: ValueError: boom" in text
    assert "2/3 seeds finished" in text and "mean 0.375" in text
    assert "best checkpoint: /r/best.ckpt" in text
