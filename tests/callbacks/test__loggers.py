"""Figures reach every logger the user has, read back with the real libraries: TensorBoard's event file, an
MLflow file store, a W&B offline run folder, PNG files for CSV-only runs; the custom-scalars layout holds
exactly the charts that get data; importing the package imports neither mlflow nor wandb."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, loggers
from matplotlib.image import imread

from lightning_landscape import (
    EdgeOfStabilityMonitor,
    GradientNoiseScaleMonitor,
    GradientNormMonitor,
    HessianEigenMonitor,
    LossLandscapeMonitor,
    RiskGapMonitor,
)
from lightning_landscape.callbacks import _loggers, _tensorboard, tags
from lightning_landscape.callbacks._loggers import figure_path, log_figure, logger_kind
from tests.callbacks._cb_helpers import TinyRegression, make_loader
from tests.callbacks._events import read_event_tags, read_layouts, read_scalars


def _plane_monitor() -> LossLandscapeMonitor:
    """The cheapest monitor that draws a figure: a 3 x 3 plane, once per epoch, no trajectory."""
    return LossLandscapeMonitor(mode="plane", steps=3, span=0.5, trajectory=False)


def _fit(root: Path, logger: Any, trainer_kwargs: dict[str, Any]) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(
        max_epochs=1,
        callbacks=[_plane_monitor()],
        logger=logger,
        **{**trainer_kwargs, "default_root_dir": root},
    )
    trainer.fit(TinyRegression(), make_loader(n=16, batch_size=8))
    return trainer


def _png(path: Path) -> np.ndarray:
    """The decoded pixels of a PNG file, checked to be a drawn picture (not one flat colour)."""
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] >= 100 and pixels.shape[1] >= 100, pixels.shape
    assert float(pixels[..., :3].std()) > 0.01, f"{path} is blank"
    return pixels


# -- which logger gets what, recognised by class without importing mlflow/wandb ----------------------------


def _bare(cls: type) -> Any:
    return object.__new__(cls)  # a logger object without running its constructor (no run, no import)


def test_logger_kind_by_class_in_both_namespaces_and_subclasses() -> None:
    namespaces = [loggers]
    try:
        import pytorch_lightning.loggers as pl_loggers

        namespaces.append(pl_loggers)
    except ImportError:  # pragma: no cover - the lowest-version environment has no pytorch_lightning
        pass
    for ns in namespaces:
        assert logger_kind(_bare(ns.TensorBoardLogger)) == "tensorboard"
        assert logger_kind(_bare(ns.MLFlowLogger)) == "mlflow"
        assert logger_kind(_bare(ns.WandbLogger)) == "wandb"
        assert logger_kind(_bare(ns.CSVLogger)) == "file"

    class MyTensorBoard(loggers.TensorBoardLogger):
        pass

    class TensorBoardLogger:  # same name, not Lightning's: a file logger like any other
        pass

    assert logger_kind(_bare(MyTensorBoard)) == "tensorboard"
    assert logger_kind(TensorBoardLogger()) == "file"


@pytest.mark.slow
def test_importing_the_package_imports_neither_mlflow_nor_wandb() -> None:
    code = (
        "import sys, lightning_landscape as ll\n"
        "import lightning_landscape.callbacks._loggers, lightning_landscape.callbacks._tensorboard\n"
        "ll.LossLandscapeMonitor, ll.HessianEigenMonitor\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'wandb')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


# -- the real loggers, one fit each ------------------------------------------------------------------------


def test_figures_reach_tensorboard_csv_and_mlflow_at_once(
    tmp_path: Path, trainer_kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow", reason="the test extra installs mlflow-skinny")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow >= 3.x keeps the file store behind this
    uri = f"file:{tmp_path}/mlruns"
    tb = loggers.TensorBoardLogger(tmp_path, name="tb")
    csv = loggers.CSVLogger(tmp_path, name="csv")
    mlf = loggers.MLFlowLogger(tracking_uri=uri, experiment_name="figures")
    trainer = _fit(tmp_path, [tb, csv, mlf], trainer_kwargs)

    # The step of the figure is the step of the landscape scalars (two batches: logged at step 1).
    steps = read_scalars(tb.log_dir)[tags.LANDSCAPE_SHARPNESS]
    assert list(steps) == [1]
    # TensorBoard: the image in the event file, and a layout of exactly the plane's scalars.
    assert tags.LANDSCAPE_IMAGE in read_event_tags(tb.log_dir)["images"]
    assert read_layouts(tb.log_dir) == [{"landscape": ["sharpness", "center loss"]}]
    # CSV: a PNG in its log dir, pixel for pixel the monitor's own file (same figure, same dpi).
    own = _png(Path(trainer.log_dir or "") / "landscape" / "epoch_0.png")
    csv_png = figure_path(csv.log_dir, tags.LANDSCAPE_IMAGE, 1)
    assert csv_png == Path(csv.log_dir, "figures", "landscape", "surface", "step_000001.png")
    np.testing.assert_array_equal(_png(csv_png), own)
    # MLflow: read back through the tracking client from the file store.
    client = MlflowClient(tracking_uri=uri)
    listed = [a.path for a in client.list_artifacts(mlf.run_id, "figures/landscape/surface")]
    assert listed == ["figures/landscape/surface/step_000001.png"]
    local = Path(client.download_artifacts(mlf.run_id, listed[0], str(tmp_path / "download")))
    assert _png(local).shape[:2] == own.shape[:2]
    history = client.get_metric_history(mlf.run_id, tags.LANDSCAPE_SHARPNESS)
    assert [(m.step, m.value) for m in history] == [(1, pytest.approx(steps[1], rel=1e-6))]


def test_figures_reach_wandb_offline_run(
    tmp_path: Path, trainer_kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    wandb = pytest.importorskip("wandb", reason="the test extra installs wandb")
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "WANDB_CONFIG_DIR": str(tmp_path / "config"),
        "WANDB_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_DATA_DIR": str(tmp_path / "data"),
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_ERROR_REPORTING": "false",
    }.items():
        monkeypatch.setenv(key, value)
    logger = loggers.WandbLogger(save_dir=str(tmp_path), offline=True, project="figures")
    try:
        _fit(tmp_path, logger, trainer_kwargs)
        run_dir = Path(logger.experiment.dir).parent
    finally:
        wandb.finish()
    images = sorted(run_dir.glob("files/media/images/landscape/surface_*.png"))
    assert run_dir.name.startswith("offline-run-") and len(images) == 1, list(run_dir.rglob("*.png"))
    _png(images[0])


def test_no_logger_writes_png_under_the_default_root_dir(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    _fit(tmp_path, False, trainer_kwargs)
    pngs = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "figures").rglob("*.png"))
    assert pngs == ["figures/landscape/surface/step_000001.png"]
    np.testing.assert_array_equal(_png(tmp_path / pngs[0]), _png(tmp_path / "landscape" / "epoch_0.png"))


class _Recorder:
    """Mixed before a logger class: records the calls ``log_figure`` makes instead of making them."""

    calls: list[tuple[Any, ...]]
    _dir: Path | None

    @property
    def log_dir(self) -> Any:
        return self._dir

    @property
    def experiment(self) -> Any:
        return self

    @property
    def run_id(self) -> str:
        return "run"

    def add_figure(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("add_figure", args, kwargs))

    def log_figure(self, *args: Any) -> None:
        self.calls.append(("log_figure", args))

    def log_image(self, **kwargs: Any) -> None:
        self.calls.append(("log_image", kwargs))


def _recorder(cls: type, log_dir: Path | None = None) -> Any:
    """An object of a subclass of ``cls`` (so ``logger_kind`` sees ``cls``) that only records."""
    rec = object.__new__(type(cls.__name__, (_Recorder, cls), {}))
    rec.calls, rec._dir = [], log_dir
    return rec


def test_log_figure_dispatches_once_per_logger_and_only_on_rank_zero(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    tb, mlf, wb = (
        _recorder(c) for c in (loggers.TensorBoardLogger, loggers.MLFlowLogger, loggers.WandbLogger)
    )
    two_csv = [_recorder(loggers.CSVLogger, tmp_path), _recorder(loggers.CSVLogger, tmp_path)]

    trainer = SimpleNamespace(
        is_global_zero=True, loggers=[tb, mlf, wb, *two_csv], default_root_dir=tmp_path / "r"
    )
    sent = log_figure(trainer, "landscape/surface", fig, 7)  # type: ignore[arg-type]
    png = figure_path(tmp_path, "landscape/surface", 7)
    assert sent == ["tensorboard", "mlflow:figures/landscape/surface/step_000007.png", "wandb", str(png)]
    assert tb.calls == [("add_figure", ("landscape/surface", fig), {"global_step": 7, "close": False})]
    assert mlf.calls == [("log_figure", ("run", fig, "figures/landscape/surface/step_000007.png"))]
    assert wb.calls == [("log_image", {"key": "landscape/surface", "images": [fig], "step": 7})]
    assert png.is_file() and not (tmp_path / "r").exists()  # two CSV loggers in one folder: one file
    trainer.is_global_zero = False
    assert log_figure(trainer, "landscape/surface", fig, 8) == []  # type: ignore[arg-type]
    assert len(tb.calls) == 1 and not figure_path(tmp_path, "landscape/surface", 8).exists()
    assert _loggers.FIGURES_DIR == "figures"


# -- the layout holds exactly the charts that get data -----------------------------------------------------


@pytest.mark.parametrize(
    ("callbacks", "expected"),
    [
        ([HessianEigenMonitor()], {"hessian": ["eigenvalues", "products", "converged"]}),
        (
            [HessianEigenMonitor(trace=True, blocks=["net.0"])],
            {"hessian": ["eigenvalues", "trace", "products", "converged", "eigenvalues net.0"]},
        ),
        ([GradientNormMonitor(per_layer=False)], {"grad_norm": ["total"]}),
        ([GradientNormMonitor()], {"grad_norm": ["total", "per layer"]}),
        ([RiskGapMonitor(val_key=None)], {"risk": ["risk"]}),
        ([RiskGapMonitor()], {"risk": ["risk", "gaps"]}),
        ([LossLandscapeMonitor()], {"landscape": ["sharpness", "center loss", "curvature"]}),
        ([LossLandscapeMonitor(mode="plane")], {"landscape": ["sharpness", "center loss"]}),
        (
            [LossLandscapeMonitor(mode="plane", sharpness_rho=0.05)],
            {"landscape": ["sharpness", "center loss", "adaptive sharpness"]},
        ),
        ([EdgeOfStabilityMonitor()], {"stability": ["sharpness vs threshold", "ratio"]}),
        (
            [EdgeOfStabilityMonitor(batch_sharpness=True)],
            {"stability": ["sharpness vs threshold", "ratio", "batch sharpness"]},
        ),
        ([GradientNoiseScaleMonitor()], {"noise_scale": ["b_simple", "gradient and noise"]}),
    ],
)
def test_layout_holds_the_charts_with_data(callbacks: list[Any], expected: dict[str, list[str]]) -> None:
    assert {c: list(charts) for c, charts in _tensorboard.layout(callbacks).items()} == expected


def test_risk_gaps_chart_has_the_gaps_that_are_logged() -> None:
    def gaps(**kwargs: Any) -> list[str]:
        charts = _tensorboard.layout([RiskGapMonitor(**kwargs)])["risk"]
        return charts["risk"][1] + charts.get("gaps", [None, []])[1]

    assert gaps(val_key=None, optimal_risk=0.0) == ["^risk/train$", "^risk/optimality_gap$"]
    assert gaps(val_key=None, train_risk="running_mean") == ["^risk/train_running_mean$"]
    assert gaps(train_risk="running_mean")[2] == "^risk/generalization_gap_running_mean$"
    assert gaps(optimal_risk=0.0) == [
        "^risk/train$",
        "^risk/val$",
        "^risk/generalization_gap$",
        "^risk/optimality_gap$",
        "^risk/excess_risk$",
    ]


def test_layout_in_the_event_file_has_no_trace_chart_without_trace(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    torch.manual_seed(0)
    tb = loggers.TensorBoardLogger(tmp_path, name="tb")
    monitors = [
        HessianEigenMonitor(every_n_steps=1),
        LossLandscapeMonitor(mode="line", steps=3, trajectory=False),
    ]
    trainer = Trainer(max_steps=2, callbacks=monitors, logger=tb, **trainer_kwargs)
    trainer.fit(TinyRegression(), make_loader(n=16, batch_size=8))
    layouts = read_layouts(tb.log_dir)
    assert layouts == [
        {
            "hessian": ["eigenvalues", "products", "converged"],
            "landscape": ["sharpness", "center loss", "curvature"],
        }
    ]
    # Every chart's scalars are in the event file, and nothing logged is left without a chart.
    logged = {t for t in read_scalars(tb.log_dir) if t.split("/")[0] in ("hessian", "landscape")}
    assert logged == {
        tags.hessian_eig_tag(1),
        tags.HESSIAN_NUM_PRODUCTS,
        tags.HESSIAN_CONVERGED,
        tags.LANDSCAPE_SHARPNESS,
        tags.LANDSCAPE_CENTER_LOSS,
        tags.LANDSCAPE_CURVATURE,
    }
    regexes = {
        (category, title): spec[1]
        for category, charts in _tensorboard.layout(monitors).items()
        for title, spec in charts.items()
    }
    for chart, patterns in regexes.items():
        assert any(re.match(p, t) for p in patterns for t in logged), f"chart {chart} would stay empty"
    for tag in logged:
        assert any(re.match(p, tag) for patterns in regexes.values() for p in patterns), f"{tag} has no chart"
