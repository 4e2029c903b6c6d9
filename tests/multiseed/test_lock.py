"""One writer at a time: the run folder's OS lock, in another process and in this one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from _tiny import fit

from lightning_landscape.multiseed.lock import RootDirBusyError, RunLock
from lightning_landscape.multiseed.paths import LOCK_FILE, SUMMARY_JSON


@pytest.mark.slow
def test_a_second_process_is_refused_naming_the_holder(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    code = (
        "import sys, time\nfrom lightning_landscape.multiseed.lock import RunLock\n"
        "lock = RunLock(sys.argv[1]).__enter__()\nprint('locked', flush=True)\ntime.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RootDirBusyError, match=rf"pid {holder.pid} on host {socket.gethostname()}"):
            fit(root, [0], epochs=2)
        assert not (root / SUMMARY_JSON).exists() and not list(root.glob("seed_*"))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # A holder that died (even by SIGKILL) leaves no stale lock.
    assert fit(root, [0], epochs=2).runs[0].status == "finished"


def test_the_lock_is_exclusive_within_one_process_too(tmp_path: Path) -> None:
    with RunLock(tmp_path), pytest.raises(RootDirBusyError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).__enter__()
    with RunLock(tmp_path):  # released on exit
        pass


def test_the_lock_file_names_its_holder_only_while_held(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        held = (tmp_path / LOCK_FILE).read_text()
    assert held.startswith(f"pid {os.getpid()} on host {socket.gethostname()} (since ")
    assert (tmp_path / LOCK_FILE).read_text() == ""
