"""Both Lightning packages on the same cases: ``lightning.pytorch`` and the standalone ``pytorch_lightning``.

Every monitor trains in a Trainer of each package with a module of that package and logs the same tags with
the same values (the ``lightning.pytorch`` run is the reference), and ``MultiSeedTrainer`` builds the
module's own package's Trainer, checkpoints and logger. Where ``pytorch_lightning`` is not installed (the
``make test-min`` venv) its cases are skipped: that environment has only ``lightning``.
"""

from __future__ import annotations

import csv
import importlib
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import lightning.pytorch
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import lightning_landscape
from lightning_landscape import callbacks
from lightning_landscape._namespace import in_namespace, loaded_types, misconfiguration_types, namespace_of
from lightning_landscape.callbacks._lightning import is_sharded
from tests._shared import QUIET

try:  # a real difference between environments: `make test-min` installs `lightning` only
    import pytorch_lightning  # noqa: F401

    HAS_PL = True
except ImportError:
    HAS_PL = False
NO_PL = pytest.mark.skipif(not HAS_PL, reason="pytorch_lightning is not installed in this environment")
NAMESPACES = [
    pytest.param("lightning.pytorch", id="lightning.pytorch"),
    pytest.param("pytorch_lightning", id="pytorch_lightning", marks=NO_PL),
]
ROOT = Path(__file__).resolve().parents[1]


class _Body:
    """A 3-4-1 tanh MLP on fixed regression data; mixed into each package's LightningModule."""

    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()  # type: ignore[attr-defined]
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def _loss(self, batch: Any) -> Tensor:
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss)  # type: ignore[attr-defined]
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))  # type: ignore[attr-defined]

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", self._loss(batch))  # type: ignore[attr-defined]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)  # type: ignore[attr-defined]


def _module_class(namespace: str) -> type:
    """``Tiny`` for ``namespace``: the same module body on that package's LightningModule."""
    ns = importlib.import_module(namespace)
    return type("Tiny", (_Body, ns.LightningModule), {"__module__": __name__})


def _loader(seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 3, generator=g)
    return DataLoader(TensorDataset(x, torch.sin(x.sum(1, keepdim=True))), batch_size=8)


def _monitors(source: ModuleType) -> list[Any]:
    return [
        source.GradientNormMonitor(),
        source.HessianEigenMonitor(every_n_steps=2),
        source.RiskGapMonitor(),
        source.LossLandscapeMonitor(),
        source.GradientNoiseScaleMonitor(),
        source.EdgeOfStabilityMonitor(every_n_steps=2),
    ]


def _fit_with_monitors(namespace: str, source: ModuleType, root: Path) -> dict[str, list[str]]:
    """Train ``Tiny`` of ``namespace`` with the five monitors from ``source``; the CSV columns read back."""
    ns = importlib.import_module(namespace)
    torch.manual_seed(0)
    model = _module_class(namespace)()
    trainer = ns.Trainer(
        **QUIET, max_epochs=2, log_every_n_steps=1, accelerator="cpu", devices=1, enable_checkpointing=False,
        default_root_dir=root, logger=ns.loggers.CSVLogger(root), callbacks=_monitors(source),
    )  # fmt: skip
    trainer.fit(model, _loader(0), _loader(1))
    with open(Path(trainer.logger.log_dir, "metrics.csv")) as file:
        rows = list(csv.DictReader(file))
    return {key: [r[key] for r in rows if r[key]] for key in rows[0] if key not in ("epoch", "step")}


MONITORS = [
    "GradientNoiseScaleMonitor", "GradientNormMonitor", "HessianEigenMonitor", "LossLandscapeMonitor",
    "RiskGapMonitor", "EdgeOfStabilityMonitor",
]  # fmt: skip
MONITOR_TAGS = {
    "grad_norm/total", "grad_norm/net.0", "grad_norm/net.2",
    "hessian/eig_1", "hessian/converged", "hessian/num_products",
    "risk/train", "risk/val", "risk/generalization_gap",
    "landscape/sharpness", "landscape/center_loss", "landscape/curvature",
    "noise_scale/grad_sq", "noise_scale/trace_cov",
    "stability/sharpness", "stability/threshold", "stability/ratio",
}  # fmt: skip


@pytest.fixture(scope="module")
def reference_logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """The monitors' logs of the ``lightning.pytorch`` run: what every other case must reproduce."""
    return _fit_with_monitors("lightning.pytorch", callbacks, tmp_path_factory.mktemp("reference"))


@pytest.mark.parametrize(
    ("namespace", "source"),
    [
        pytest.param("lightning.pytorch", "lightning_landscape", id="lightning.pytorch"),
        pytest.param("pytorch_lightning", "lightning_landscape", id="pytorch_lightning", marks=NO_PL),
        pytest.param("pytorch_lightning", "lightning_landscape.pl", id="pytorch_lightning-pl", marks=NO_PL),
    ],
)
def test_every_monitor_logs_the_same_in_both_packages(
    namespace: str, source: str, reference_logs: dict[str, list[str]], tmp_path: Path
) -> None:
    logs = _fit_with_monitors(namespace, importlib.import_module(source), tmp_path)
    assert MONITOR_TAGS <= set(logs)
    # Same code, same seed, same data: the numbers agree exactly with the lightning.pytorch run.
    assert {k: logs[k] for k in MONITOR_TAGS} == {k: reference_logs[k] for k in MONITOR_TAGS}
    assert all(len(reference_logs[k]) > 0 for k in MONITOR_TAGS)


@NO_PL
def test_pl_monitors_are_pytorch_lightning_callbacks_with_the_same_state_key() -> None:
    import lightning.pytorch
    import pytorch_lightning

    from lightning_landscape import pl

    # Every callback class of lightning_landscape.callbacks (monitors added later join by themselves).
    assert {*MONITORS, "LineProgressBar"} <= set(pl.__all__) <= set(callbacks.__all__)
    for name in pl.__all__:
        cls = getattr(pl, name)
        assert issubclass(cls, getattr(callbacks, name))
        assert issubclass(cls, pytorch_lightning.Callback) and issubclass(cls, lightning.pytorch.Callback)
        assert cls().state_key == getattr(callbacks, name)().state_key
        assert getattr(pl, name) is cls  # made once
        assert pickle.loads(pickle.dumps(cls())).__class__ is cls
    with pytest.raises(AttributeError, match="NoSuchMonitor"):
        pl.NoSuchMonitor  # noqa: B018
    # A single callback without a list: pytorch_lightning's Trainer wraps it only if it is its own type.
    trainer = pytorch_lightning.Trainer(callbacks=pl.GradientNormMonitor(), **QUIET, logger=False)
    assert any(isinstance(c, pl.GradientNormMonitor) for c in trainer.callbacks)


@NO_PL
def test_pytorch_lightning_cli_takes_a_pl_monitor_by_class_path(tmp_path: Path) -> None:
    from pytorch_lightning.cli import LightningCLI

    cli = LightningCLI(
        _module_class("pytorch_lightning"),
        run=False,
        args=[
            "--trainer.callbacks+=lightning_landscape.pl.HessianEigenMonitor",
            "--trainer.callbacks.every_n_steps=3",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        save_config_kwargs={"overwrite": True},
    )
    (monitor,) = [c for c in cli.trainer.callbacks if isinstance(c, callbacks.HessianEigenMonitor)]
    assert type(monitor).__module__ == "lightning_landscape.pl" and monitor.every_n_steps == 3


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_namespace_of_and_loaded_types(namespace: str) -> None:
    ns = importlib.import_module(namespace)
    tiny = _module_class(namespace)
    assert namespace_of(tiny) is ns and namespace_of(tiny()) is ns
    assert namespace_of(ns.Trainer(logger=False, **QUIET)) is ns
    assert namespace_of(ns.callbacks.ModelCheckpoint()) is ns
    assert ns.LightningModule in loaded_types("LightningModule")
    assert ns.Callback in loaded_types("Callback")
    fabric = "lightning.fabric" if namespace == "lightning.pytorch" else "lightning_fabric"
    assert importlib.import_module(f"{fabric}.utilities.exceptions").MisconfigurationException in (
        misconfiguration_types()
    )
    assert is_sharded(ns.strategies.FSDPStrategy()) and not is_sharded(ns.strategies.DDPStrategy())
    with pytest.raises(TypeError, match=r"not built on lightning\.pytorch or pytorch_lightning"):
        namespace_of(nn.Linear(1, 1))


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_in_namespace_adds_the_package_base_and_keeps_the_class(namespace: str) -> None:
    from lightning_landscape.multiseed.checkpoints import SafeCheckpointIO

    ns = importlib.import_module(namespace)
    made = in_namespace(SafeCheckpointIO, namespace)
    assert in_namespace(SafeCheckpointIO, namespace) is made
    assert issubclass(made, SafeCheckpointIO) and issubclass(made, ns.plugins.CheckpointIO)
    assert made.__name__ == "SafeCheckpointIO" and made.__qualname__ == SafeCheckpointIO.__qualname__
    assert (made is SafeCheckpointIO) == (namespace == "lightning.pytorch")
    with pytest.raises(ValueError, match="`namespace` must be one of"):
        in_namespace(SafeCheckpointIO, "lightning")


class _Seen:
    """What each seed's Trainer was made of (callbacks are deep-copied per seed, so a class attribute)."""

    trainers: ClassVar[list[dict[str, Any]]] = []


def _recorder(namespace: str) -> Any:
    ns = importlib.import_module(namespace)

    class Recorder(ns.Callback):  # type: ignore[misc,name-defined]
        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            _Seen.trainers.append(
                {
                    "trainer": type(trainer),
                    "checkpoints": [type(c) for c in trainer.checkpoint_callbacks],
                    "logger": type(trainer.logger),
                    "checkpoint_io": trainer.strategy.checkpoint_io,
                }
            )

    return Recorder()


@pytest.mark.parametrize("namespace", NAMESPACES)
@pytest.mark.parametrize("kind", ["class", "factory"])
def test_multiseed_trainer_builds_the_modules_package(namespace: str, kind: str, tmp_path: Path) -> None:
    from lightning_landscape import MultiSeedTrainer
    from lightning_landscape.multiseed.checkpoints import SafeCheckpointIO

    ns = importlib.import_module(namespace)
    tiny = _module_class(namespace)
    model = tiny if kind == "class" else (lambda: tiny(hidden=4))
    _Seen.trainers.clear()
    trainer = MultiSeedTrainer(
        seeds=2, monitor="val_loss", root_dir=tmp_path, max_epochs=2, quiet=True, enable_progress_bar=False,
        callbacks=[_recorder(namespace), lightning_landscape.GradientNormMonitor()],
    )  # fmt: skip
    result = trainer.fit(
        model, train_dataloaders=_loader(0), val_dataloaders=_loader(1), test_dataloaders=_loader(2)
    )
    assert [r.status for r in result.runs] == ["finished", "finished"]
    assert result.best_test_score is not None and result.best_model_path
    # The pre-flight Trainer (no logger, no checkpoints), then each seed's own.
    assert [seen["trainer"] for seen in _Seen.trainers] == [ns.Trainer] * 3
    for seen in _Seen.trainers[1:]:
        assert seen["checkpoints"] == [ns.callbacks.ModelCheckpoint] * 2
        assert issubclass(seen["logger"], ns.loggers.TensorBoardLogger)
        assert isinstance(seen["checkpoint_io"], (SafeCheckpointIO, ns.plugins.CheckpointIO))
    for run in result.runs:
        assert Path(run.last_model_path).is_file() and list(Path(run.log_dir).glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_importing_for_lightning_pytorch_never_imports_pytorch_lightning(tmp_path: Path) -> None:
    code = (
        "import sys, lightning.pytorch as L\n"
        "from lightning_landscape import HessianEigenMonitor, MultiSeedTrainer\n"
        "from lightning_landscape.multiseed.build import model_builder\n"
        "from lightning_landscape.multiseed.executors import seed_checkpoints\n"
        "model_builder(L.LightningModule, None); HessianEigenMonitor()\n"
        "assert 'pytorch_lightning' not in sys.modules, 'pytorch_lightning imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


@pytest.mark.parametrize("namespace", NAMESPACES)
@pytest.mark.parametrize("monitor", ["HessianEigenMonitor", "LossLandscapeMonitor"])
def test_sharded_strategies_of_either_package_are_refused(namespace: str, monitor: str) -> None:
    ns = importlib.import_module(namespace)
    trainer = ns.Trainer(accelerator="cpu", devices=1, logger=False, **QUIET)
    trainer._accelerator_connector.strategy = object.__new__(ns.strategies.FSDPStrategy)
    with pytest.raises(misconfiguration_types(), match="does not support FSDPStrategy"):
        getattr(callbacks, monitor)().setup(trainer, _module_class(namespace)(), "fit")


class _InterruptAt(lightning.pytorch.Callback):
    """Ctrl-C (SIGINT to this process) at a global step of one seed."""

    def __init__(self, seed: int, step: int) -> None:
        self.seed, self.step = seed, step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if int(os.environ.get("PL_GLOBAL_SEED", "-1")) == self.seed and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_an_interrupted_seed_resumes_to_the_uninterrupted_score(namespace: str, tmp_path: Path) -> None:
    from lightning_landscape import MultiSeedInterrupted, MultiSeedTrainer

    tiny = _module_class(namespace)
    data = {"train_dataloaders": _loader(0), "val_dataloaders": _loader(1)}

    def trainer(root: Path, *callbacks: Any) -> MultiSeedTrainer:
        return MultiSeedTrainer(
            seeds=[0, 1], monitor="val_loss", root_dir=root, max_epochs=3, quiet=True, test="none",
            enable_progress_bar=False, callbacks=list(callbacks),
        )  # fmt: skip

    expected = trainer(tmp_path / "uninterrupted").fit(tiny, **data).scores
    handler = signal.getsignal(signal.SIGINT)
    try:  # 4 batches an epoch: stopped in epoch 1, last.ckpt is from the end of epoch 0
        with pytest.raises(MultiSeedInterrupted):
            trainer(tmp_path / "run", _InterruptAt(seed=1, step=6)).fit(tiny, **data)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after a Ctrl-C
    result = trainer(tmp_path / "run").fit(tiny, **data)
    assert result.runs[1].extra["resumed_from"].endswith("last.ckpt")
    assert result.scores == pytest.approx(expected, rel=1e-6)
