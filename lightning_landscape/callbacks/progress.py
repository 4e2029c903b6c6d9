"""Progress people can read in a log: a few lines per epoch when the output is not a terminal.

Lightning's live bars redraw many times a second; written to a file (``make demo > log``, a CI job) each
redraw is another line, thousands per run. :class:`LineProgressBar` prints a bounded number of plain lines
instead: ``lines_per_epoch`` per training epoch at evenly spaced batches, the last with the epoch's metrics.
:func:`progress_bar` picks the right one for where standard output goes.
"""

from __future__ import annotations

import importlib
import math
import sys
import time
from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from typing_extensions import override

from lightning_landscape._namespace import NAMESPACES, in_namespace
from lightning_landscape.callbacks._checks import check_choice, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl


class LineProgressBar(ProgressBar):
    """Plain progress lines on standard output: at most ``lines_per_epoch`` per training epoch.

    Each line reads ``Epoch 2/9   50% 25/50 batches  4.1s`` (Lightning's numbering: the third of ten epochs);
    the one at an epoch's end adds the metrics a progress bar shows (``self.log(..., prog_bar=True)``, the
    validation ones included). A run of ``E`` epochs prints at most ``E * lines_per_epoch`` lines, whatever
    its number of batches; an epoch of unknown length (an iterable dataset) prints its end line only.

    Args:
        lines_per_epoch: lines per training epoch, the last at its end (1: one line per epoch; 4: every
            25 %).

    Raises:
        ValueError: ``lines_per_epoch`` is not a positive int.

    Example::

        from lightning.pytorch import Trainer
        from lightning_landscape.callbacks import LineProgressBar

        trainer = Trainer(callbacks=[LineProgressBar(lines_per_epoch=4)])
    """

    def __init__(self, lines_per_epoch: int = 1) -> None:
        super().__init__()
        check_int("lines_per_epoch", lines_per_epoch)
        self.lines_per_epoch = lines_per_epoch
        self._enabled = True
        self._epoch_start = 0.0
        self._printed = 0

    @override
    def disable(self) -> None:
        self._enabled = False

    @override
    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        """Whether this bar prints (the Trainer disables it off global rank zero)."""
        return self._enabled

    def _line(self, trainer: pl.Trainer, pl_module: pl.LightningModule, done: int, metrics: bool) -> None:
        total = self.total_train_batches
        # Lightning's numbering: epochs count from 0, "Epoch 2/9" is the third of ten.
        last = (
            f"/{trainer.max_epochs - 1}" if trainer.max_epochs is not None and trainer.max_epochs > 0 else ""
        )
        parts = [f"Epoch {trainer.current_epoch}{last}"]
        if math.isfinite(total) and total > 0:
            parts.append(f"{100 * done / total:3.0f}% {done}/{int(total)} batches")
        else:
            parts.append(f"{done} batches")
        parts.append(f"{time.perf_counter() - self._epoch_start:.1f}s")
        if metrics:
            values = self.get_metrics(trainer, pl_module)
            parts.append(
                " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
            )
        print("  ".join(p for p in parts if p), file=sys.stdout, flush=True)
        self._printed += 1

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._printed = 0

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        total = self.total_train_batches
        if not self.is_enabled or self.lines_per_epoch == 1 or not math.isfinite(total) or total <= 0:
            return
        done = batch_idx + 1
        # The k-th of the lines before the last is due once k/lines_per_epoch of the epoch is done.
        due = math.floor(done * self.lines_per_epoch / total)
        if done < total and due > self._printed and self._printed < self.lines_per_epoch - 1:
            self._line(trainer, pl_module, done, metrics=False)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.is_enabled:
            self._line(trainer, pl_module, trainer.fit_loop.epoch_loop.batch_progress.current.ready, True)


def output_is_terminal() -> bool:
    """Whether standard output is a terminal (where a live bar redraws in place) rather than a file or pipe.

    Example:
        >>> import contextlib, io
        >>> with contextlib.redirect_stdout(io.StringIO()):  # a file, a pipe
        ...     terminal = output_is_terminal()
        >>> terminal
        False
    """
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty is not None and isatty())


def progress_bar(namespace: str = "lightning.pytorch", lines_per_epoch: int = 1) -> Any:
    """The progress bar for where standard output goes: Lightning's live ``TQDMProgressBar`` on a terminal,
    a :class:`LineProgressBar` (``lines_per_epoch`` lines per epoch) in a file, a pipe or CI.

    Args:
        namespace: the Lightning package of the Trainer it is for, ``"lightning.pytorch"`` or
            ``"pytorch_lightning"``.
        lines_per_epoch: lines per epoch off a terminal.

    Returns:
        A progress-bar callback of ``namespace``: pass it in ``Trainer(callbacks=[...])``.

    Raises:
        ValueError: an unknown ``namespace`` or a bad ``lines_per_epoch``.

    Example:
        >>> import contextlib, io
        >>> with contextlib.redirect_stdout(io.StringIO()):  # a file, a pipe
        ...     bar = progress_bar()
        >>> type(bar).__name__
        'LineProgressBar'
    """
    check_choice("namespace", namespace, tuple(NAMESPACES))
    check_int("lines_per_epoch", lines_per_epoch)
    if output_is_terminal():
        # Not Lightning's default: with rich installed that is RichProgressBar, which draws through its
        # own console and does not nest under the multi-seed trainer's tqdm bar over the seeds.
        return importlib.import_module(namespace).callbacks.TQDMProgressBar()
    return in_namespace(LineProgressBar, namespace)(lines_per_epoch=lines_per_epoch)
