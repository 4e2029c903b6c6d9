"""SIGTERM and Ctrl-C through the whole of a multi-seed run: one exit code per signal, whatever the phase.

During training Lightning turns a SIGTERM into ``SIGTERMException`` and a Ctrl-C into ``sys.exit(1)``;
after training (the test of the winner, the barriers, the figures) no Trainer may be running, and a
SIGTERM would kill the process outright. :func:`sigterm_raises` makes a SIGTERM raise
``SIGTERMException`` there too, and :func:`interrupted` turns whichever arrives into
:class:`MultiSeedInterrupted`: exit code 143 for SIGTERM, 130 for Ctrl-C, the folder resumable.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from lightning_landscape._namespace import loaded_types
from lightning_landscape.multiseed._lightning import SIGTERMException

EXIT_INTERRUPTED_SIGINT = 130
EXIT_INTERRUPTED_SIGTERM = 143


class MultiSeedInterrupted(SystemExit):
    """The run was interrupted (SIGTERM, Ctrl-C); rerunning resumes it.

    A ``SystemExit`` with code ``128 + signal`` (143 for SIGTERM, 130 for Ctrl-C), so a script that does
    not catch it exits with that code, as a process killed by the signal would report it.
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _raise_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SIGTERMException()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside: a SIGTERM raises ``SIGTERMException`` (in the main thread), and Ctrl-C is restored after.

    A Trainer started inside composes its own SIGTERM handler with this one, so a SIGTERM during
    ``Trainer.test`` raises too. Lightning ignores SIGINT after a Ctrl-C; the handler found on entry
    is put back on exit.

    Example:
        >>> with sigterm_raises():
        ...     signal.getsignal(signal.SIGTERM) is _raise_sigterm
        True
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, _raise_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def interrupted(err: BaseException, root_dir: str | Path, unfinished: Sequence[int]) -> MultiSeedInterrupted:
    """The :class:`MultiSeedInterrupted` for a ``KeyboardInterrupt`` or ``SystemExit`` caught in a run.

    ``SIGTERMException`` gives code 143; a ``KeyboardInterrupt`` or the ``SystemExit`` Lightning raises for
    a Ctrl-C gives 130. ``unfinished`` are the asked-for seeds not yet finished or failed.

    Example:
        >>> interrupted(KeyboardInterrupt(), "runs/a", []).code
        130
    """
    sigterm = isinstance(err, (SIGTERMException, *loaded_types("utilities.exceptions.SIGTERMException")))
    code = EXIT_INTERRUPTED_SIGTERM if sigterm else EXIT_INTERRUPTED_SIGINT
    name = "SIGTERM" if code == EXIT_INTERRUPTED_SIGTERM else "Ctrl-C"
    if unfinished:
        state = f"with seeds {list(unfinished)} unfinished"
        todo = "to resume them (finished seeds are kept)"
    else:
        state = "after every seed finished, during the steps after the selection"
        todo = "to redo those steps (nothing is trained again)"
    message = (
        f"MultiSeedTrainer interrupted ({name}) {state}; rerun the same command with"
        f" root_dir={str(root_dir)!r} {todo}."
    )
    return MultiSeedInterrupted(message, code)


__all__ = [
    "EXIT_INTERRUPTED_SIGINT",
    "EXIT_INTERRUPTED_SIGTERM",
    "MultiSeedInterrupted",
    "interrupted",
    "sigterm_raises",
]
