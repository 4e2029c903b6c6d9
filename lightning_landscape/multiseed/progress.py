"""What a person watching a multi-seed run sees: one progress bar over the seeds, each notice once.

Every seed is an ordinary ``Trainer``, and each prints Lightning's banners ("GPU available", the tips,
the model summary) and notices (the pre-flight's ``limit_train_batches``): K seeds, K copies. While a
:class:`RunDisplay` is open, a logging filter lets each distinct message of those loggers through once,
and a bar in Lightning's own tqdm style counts the finished seeds with the best so far. ``quiet=True``
drops the bar and everything below a warning, for scripts.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from lightning_landscape._namespace import NAMESPACES, loaded_types
from lightning_landscape.callbacks.progress import progress_bar
from lightning_landscape.multiseed._lightning import is_rank_zero
from lightning_landscape.multiseed.result import SeedRun

# Where Lightning (either package) prints its per-Trainer banners, notices and the model summary.
_LOGGERS = tuple(
    f"{package}.{name}"
    for package in NAMESPACES
    for name in ("utilities.rank_zero", "callbacks.model_summary")
)
_OWN_PREFIX = "[MultiSeedTrainer"


class OncePerRun(logging.Filter):
    """Passes each distinct message once; the multi-seed trainer's own progress lines always pass.

    Example:
        >>> f = OncePerRun()
        >>> rec = logging.LogRecord("x", logging.INFO, "", 0, "GPU available: False", None, None)
        >>> f.filter(rec), f.filter(rec)
        (True, False)
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_OWN_PREFIX) or record.levelno >= logging.WARNING:
            return True
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def display_callbacks(
    namespace: ModuleType, trainer_kwargs: dict[str, Any], callbacks: Sequence[Any]
) -> list[Any]:
    """The progress bar and model summary a seed's Trainer (of ``namespace``) gets, unless switched off
    (``enable_progress_bar``/``enable_model_summary=False``) or given among the user's ``callbacks``.

    The bar suits standard output (:func:`~lightning_landscape.callbacks.progress.progress_bar`: a live bar
    on a terminal, a few lines per epoch in a log). The summary is Lightning's plain ``ModelSummary``,
    which logs through ``logging``, so :class:`RunDisplay` prints it once per run; Lightning's default with
    ``rich`` installed, ``RichModelSummary``, prints through rich's console, once per seed.

    Example:
        >>> import contextlib, io, lightning.pytorch
        >>> with contextlib.redirect_stdout(io.StringIO()):  # a file, a pipe
        ...     added = display_callbacks(lightning.pytorch, {}, [])
        >>> [type(c).__name__ for c in added]
        ['LineProgressBar', 'ModelSummary']
    """
    added: list[Any] = []
    has = {path: any(isinstance(c, loaded_types(path)) for c in callbacks) for path in _DISPLAY}
    if trainer_kwargs.get("enable_progress_bar") is not False and not has["callbacks.ProgressBar"]:
        added.append(progress_bar(namespace.__name__))
    if trainer_kwargs.get("enable_model_summary") is not False and not has["callbacks.ModelSummary"]:
        added.append(namespace.callbacks.ModelSummary())
    return added


_DISPLAY = ("callbacks.ProgressBar", "callbacks.ModelSummary")


def progress_line(run: SeedRun, done: int, total: int, best: SeedRun | None, monitor: str) -> str:
    """The line logged when a seed is done: its score or error, and the best seed so far.

    Example:
        >>> run = SeedRun(3, "finished", 0.25, wall_time=1.5)
        >>> progress_line(run, 2, 4, run, "val_loss")
        '[MultiSeedTrainer 2/4] seed 3 finished: val_loss=0.25 in 1.5s; best so far: seed 3 (val_loss=0.25)'
    """
    best_text = "no seed finished yet"
    if best is not None:
        best_text = f"best so far: seed {best.seed} ({monitor}={best.score:.6g})"
    if run.status == "finished":
        head = f"seed {run.seed} finished: {monitor}={run.score:.6g}"
    else:
        head = f"seed {run.seed} failed: {run.error}"
    return f"{_OWN_PREFIX} {done}/{total}] {head} in {run.wall_time:.1f}s; {best_text}"


class RunDisplay:
    """A context manager around a multi-seed run: the once-per-run filter and the seeds' progress bar.

    Args:
        total: the number of seeds of the run.
        done: how many are finished already (a resumed run starts its bar there).
        monitor: the metric shown beside the best seed.
        quiet: no bar, and nothing below a warning from Lightning or the multi-seed trainer.
    """

    def __init__(self, total: int, done: int, monitor: str, quiet: bool = False) -> None:
        self.total, self.done, self.monitor, self.quiet = total, done, monitor, quiet
        self.filter = OncePerRun()
        self.bar: Any = None
        self._levels: dict[str, int] = {}

    def __enter__(self) -> RunDisplay:
        for name in _LOGGERS:
            logger = logging.getLogger(name)
            logger.addFilter(self.filter)
            if self.quiet:
                self._levels[name] = logger.level
                logger.setLevel(logging.WARNING)
        if not self.quiet and is_rank_zero() and self.done < self.total:
            from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

            self.bar = Tqdm(
                total=self.total, initial=self.done, desc="Seeds", unit="seed", dynamic_ncols=True,
                file=sys.stderr, leave=True, position=None, bar_format=None,
            )  # fmt: skip
        return self

    def update(self, seed: int, best: Any) -> None:
        """One more seed done; ``best`` is the best finished run so far (or ``None``)."""
        if self.bar is None:
            return
        self.bar.update(1)
        if best is not None and best.score is not None:
            self.bar.set_postfix({"last": seed, "best": f"seed {best.seed} {self.monitor}={best.score:.4g}"})

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
        for name in _LOGGERS:
            logger = logging.getLogger(name)
            logger.removeFilter(self.filter)
            if name in self._levels:
                logger.setLevel(self._levels[name])
