"""One process at a time runs a folder's seeds: an OS lock on ``root_dir/.lock``.

The process holding :class:`RunLock` is the single writer of the run folder, so every update of
``summary.json`` is a read-modify-write that no other process interleaves with.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import time
from pathlib import Path

from lightning_landscape.multiseed.paths import LOCK_FILE
from lightning_landscape.multiseed.record import RecordError

# A full disk or quota: reported as an OSError naming the file (the CLI's exit code 4), not as a bad folder.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class RootDirBusyError(RuntimeError):
    """Another process holds the run folder's lock."""


class RunLock:
    """An exclusive OS lock on ``root_dir/.lock``, held while one process runs the seeds.

    The lock file says who holds it (pid, host, since when), so a second process fails with a message
    naming the holder. The kernel drops the lock when its holder exits, however it exits (a SIGKILL
    too), so a stale lock file never blocks a rerun. ``flock`` also works between hosts on NFS v4.

    Args:
        root_dir: the run folder (it must exist).

    Raises:
        RootDirBusyError: on entry, if another process holds the lock.
        RecordError: on entry, if the filesystem cannot lock files.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root, RunLock(root):
        ...     RunLock(root).__enter__()
        Traceback (most recent call last):
        ...
        lightning_landscape.multiseed.lock.RootDirBusyError: ...
    """

    def __init__(self, root_dir: str | Path) -> None:
        self.path = Path(root_dir) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        # O_NOFOLLOW: a link planted at .lock is refused, never followed (its target is never truncated).
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o666)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise IsADirectoryError(errno.EISDIR, "not a regular file", str(self.path))
        except OSError as err:
            if err.errno in _NO_SPACE:
                raise OSError(err.errno, err.strerror, str(self.path)) from err
            what = "a symbolic link" if self.path.is_symlink() else "not a file this run can open"
            raise RecordError(
                f"{self.path}: the run folder's lock is {what} ({err.strerror}); nothing was written through"
                " it. Remove it (the lock file holds no data) and rerun."
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "an unknown process"
            os.close(fd)
            raise RootDirBusyError(
                f"`root_dir` {str(self.path.parent)!r} is in use by {holder}; one process at a time runs a"
                " folder's seeds. Wait for it to finish (then rerun to pick up its results), stop it, or use"
                " another root_dir; to share the seeds among machines use executor='ray'."
            ) from err
        except OSError as err:
            os.close(fd)
            raise RecordError(
                f"{self.path}: cannot lock the run folder ({err}); put root_dir on a filesystem with file"
                " locks (flock), so that two processes cannot run it at once"
            ) from err
        try:
            os.ftruncate(fd, 0)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} (since {stamp})\n".encode(), 0)
        except OSError as err:  # a full disk: name the file, release the lock
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise OSError(err.errno, err.strerror, str(self.path)) from err
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


__all__ = ["RootDirBusyError", "RunLock"]
