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
from typing import Any

from lightning_landscape.multiseed._lightning import is_rank_zero

# Where Lightning prints its per-Trainer banners, notices and the model summary.
_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.callbacks.model_summary")
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
