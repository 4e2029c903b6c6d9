"""How what the callbacks measure reaches each logger of the Trainer: the one place that knows logger types.

Scalars go to every logger through ``logger.log_metrics`` at an explicit step (:func:`log_scalars`). A
figure goes to each logger in the way that logger shows pictures (:func:`log_figure`):

========================  ==========================================================================
logger                    where the figure goes
========================  ==========================================================================
``TensorBoardLogger``     ``experiment.add_figure(tag, figure, step)``: the Images tab
``MLFlowLogger``          ``experiment.log_figure(run_id, figure, "figures/<tag>/step_<step>.png")``
``WandbLogger``           ``log_image(tag, [figure], step)``: the run's media panel
any other (``CSVLogger``) ``<logger.log_dir>/figures/<tag>/step_<step>.png``
no logger                 ``<trainer.default_root_dir>/figures/<tag>/step_<step>.png``
========================  ==========================================================================

A logger is recognised by the name and module of its class or a base class (``MLFlowLogger`` from
``*.loggers.mlflow``), so the loggers of both ``lightning.pytorch`` and ``pytorch_lightning`` are, and
importing this package never imports ``mlflow`` or ``wandb``: only a ``WandbLogger`` the user made imports
``wandb`` (for ``wandb.Image``). Everything here acts on global rank zero only and never calls a collective,
so calling it from every rank is safe.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import lightning.pytorch as pl

LoggerKind = Literal["tensorboard", "mlflow", "wandb", "file"]

_KINDS: dict[tuple[str, str], LoggerKind] = {
    ("TensorBoardLogger", "tensorboard"): "tensorboard",
    ("MLFlowLogger", "mlflow"): "mlflow",
    ("WandbLogger", "wandb"): "wandb",
}

FIGURES_DIR = "figures"
"""The folder under a log dir that holds the figures of loggers without pictures (and of logger-less runs)."""


def logger_kind(logger: Any) -> LoggerKind:
    """How ``logger`` shows a figure: by the first class of its MRO that is one of Lightning's loggers.

    Args:
        logger: a Lightning logger (of either package namespace), or any object.

    Returns:
        ``"tensorboard"``, ``"mlflow"``, ``"wandb"``, or ``"file"`` for every other logger.

    Example:
        >>> from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
        >>> logger_kind(TensorBoardLogger(save_dir="."))
        'tensorboard'
        >>> logger_kind(CSVLogger(save_dir="."))
        'file'
    """
    for cls in type(logger).__mro__:
        kind = _KINDS.get((cls.__name__, cls.__module__.rpartition(".")[2]))
        if kind is not None and ".loggers" in cls.__module__:
            return kind
    return "file"


def figure_path(folder: str | Path, tag: str, step: int) -> Path:
    """Where a figure ``tag`` at ``step`` is written under ``folder``: ``figures/<tag>/step_<step>.png``.

    The step is zero-padded to six digits, so the files sort in step order.

    Args:
        folder: a log dir.
        tag: ``section/name`` of the figure; each segment becomes a folder.
        step: the logging step.

    Returns:
        The PNG file's path (its folder is not created).

    Example:
        >>> figure_path("logs", "landscape/surface", 12).as_posix()
        'logs/figures/landscape/surface/step_000012.png'
    """
    return Path(folder, FIGURES_DIR, *tag.split("/"), f"step_{step:06d}.png")


def _file_folder(trainer: pl.Trainer, logger: Any) -> Path:
    folder = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
    return Path(folder if folder is not None else trainer.default_root_dir)


def log_figure(trainer: pl.Trainer, tag: str, figure: Any, step: int) -> list[str]:
    """Show a matplotlib ``figure`` under ``tag`` at ``step`` in every logger of ``trainer`` (rank zero only).

    Each logger gets it its own way (see the module's table); several file loggers sharing one folder get
    one file. The figure is left open: the caller owns it.

    Args:
        trainer: the Trainer whose loggers receive the figure.
        tag: ``section/name``, e.g. ``landscape/surface``.
        figure: a ``matplotlib.figure.Figure``.
        step: the logging step (TensorBoard's and W&B's step; part of the file name elsewhere).

    Returns:
        Where it went, one entry per destination: ``"tensorboard"``, ``"mlflow:<artifact file>"``,
        ``"wandb"``, or a PNG path; empty off global rank zero.

    Example:
        >>> import tempfile
        >>> from matplotlib.figure import Figure
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(logger=False, default_root_dir=tempfile.mkdtemp(), enable_checkpointing=False)
        >>> fig = Figure()
        >>> _ = fig.add_subplot().plot([0, 1])
        >>> [Path(p).name for p in log_figure(trainer, "landscape/surface", fig, step=3)]
        ['step_000003.png']
    """
    if not trainer.is_global_zero:
        return []
    sent: list[str] = []
    files: list[Path] = []
    loggers: list[Any] = list(trainer.loggers)
    for logger in loggers:
        kind = logger_kind(logger)
        if kind == "tensorboard":
            logger.experiment.add_figure(tag, figure, global_step=step, close=False)
            sent.append(kind)
        elif kind == "mlflow":
            artifact = figure_path("", tag, step).as_posix()
            logger.experiment.log_figure(logger.run_id, figure, artifact)
            sent.append(f"mlflow:{artifact}")
        elif kind == "wandb":
            logger.log_image(key=tag, images=[figure], step=step)
            sent.append(kind)
        else:
            files.append(figure_path(_file_folder(trainer, logger), tag, step))
    if not loggers:
        files.append(figure_path(trainer.default_root_dir, tag, step))
    for path in dict.fromkeys(p.resolve() for p in files):
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
        sent.append(str(path))
    return sent


def log_scalars(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
    """Write ``metrics`` to every logger of ``trainer`` at ``step`` (global rank zero only).

    Args:
        trainer: the Trainer whose loggers receive the values.
        metrics: ``{tag: value}``.
        step: the logging step.
    """
    if not metrics or not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)
