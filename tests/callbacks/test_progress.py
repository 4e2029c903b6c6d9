"""Progress in a log: a bounded number of lines off a terminal, the live bar on one."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

from lightning_landscape.callbacks import LineProgressBar, progress_bar
from tests.callbacks._cb_helpers import TinyRegression, make_loader

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^Epoch \d+/\d+ ")


@pytest.mark.parametrize(("lines_per_epoch", "batches"), [(1, 20), (4, 20), (3, 7), (5, 3)])
def test_at_most_lines_per_epoch_lines_and_the_last_at_the_epoch_end(
    lines_per_epoch: int, batches: int, trainer_kwargs: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    kwargs = {**trainer_kwargs, "enable_progress_bar": True}
    trainer = Trainer(**kwargs, max_epochs=2, callbacks=[LineProgressBar(lines_per_epoch)], logger=False)
    trainer.fit(TinyRegression(), make_loader(n=8 * batches), make_loader(n=16, seed=1))
    lines = [line for line in capsys.readouterr().out.splitlines() if LINE.match(line)]
    per_epoch = min(lines_per_epoch, batches)  # a line needs a batch of its own
    assert len(lines) == 2 * per_epoch
    for epoch in (0, 1):  # Lightning's numbering: "Epoch 1/1" is the second of two
        mine = [line for line in lines if line.startswith(f"Epoch {epoch}/1 ")]
        assert len(mine) == per_epoch
        assert f"100% {batches}/{batches} batches" in mine[-1]
        done = [int(m) for m in re.findall(r"(\d+)/\d+ batches", "\n".join(mine))]
        assert done == sorted(set(done))  # strictly increasing


def test_epoch_line_shows_the_progress_bar_metrics(
    trainer_kwargs: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    class Shown(TinyRegression):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", self.loss_on(batch), prog_bar=True)

    kwargs = {**trainer_kwargs, "enable_progress_bar": True}
    trainer = Trainer(**kwargs, max_epochs=1, callbacks=[LineProgressBar()], logger=False)
    trainer.fit(Shown(), make_loader(), make_loader(n=16, seed=1))
    (line,) = [line for line in capsys.readouterr().out.splitlines() if LINE.match(line)]
    value = float(re.search(r"val_loss=(\S+)", line).group(1))  # type: ignore[union-attr]
    assert value == pytest.approx(float(trainer.callback_metrics["val_loss"]), rel=1e-3)


def test_progress_bar_picks_by_where_stdout_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal:
        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> int:
            return len(text)

    monkeypatch.setattr(sys, "stdout", Terminal())
    assert type(progress_bar()) is TQDMProgressBar
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert type(progress_bar(lines_per_epoch=2)) is LineProgressBar


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lines_per_epoch": 0}, "`lines_per_epoch` must be an integer >= 1, got 0."),
        ({"namespace": "lightning"}, "`namespace` must be one of ('lightning.pytorch', 'pytorch_lightning')"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        progress_bar(**kwargs)
    if "lines_per_epoch" in kwargs:
        with pytest.raises(ValueError, match=re.escape(message)):
            LineProgressBar(**kwargs)


# A plain fit (Trainer + progress_bar()) and a multi-seed fit of 2 seeds, each EPOCHS epochs of 20 batches.
EPOCHS = 3
_SCRIPT = f"""
import sys, tempfile
sys.path.insert(0, {str(ROOT)!r})
from lightning.pytorch import Trainer
from lightning_landscape import MultiSeedTrainer
from lightning_landscape.callbacks import progress_bar
from tests.callbacks._cb_helpers import TinyRegression, make_loader
root = tempfile.mkdtemp()
Trainer(max_epochs={EPOCHS}, callbacks=[progress_bar()], logger=False, enable_checkpointing=False,
        default_root_dir=root).fit(TinyRegression(), make_loader(n=160), make_loader(n=16, seed=1))
print("=== multiseed", flush=True)
MultiSeedTrainer(seeds=2, monitor="val_loss", root_dir=root + "/ms", max_epochs={EPOCHS}, test="none").fit(
    TinyRegression, train_dataloaders=make_loader(n=160), val_dataloaders=make_loader(n=16, seed=1))
"""


def _run(tmp_path: Path, terminal: bool) -> str:
    """The script's standard output, written to a file or to a pseudo-terminal."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", _SCRIPT]
    if not terminal:
        out = tmp_path / "log"
        with open(out, "w") as file:
            subprocess.run(command, stdout=file, stderr=subprocess.DEVNULL, env=env, check=True, timeout=300)
        return out.read_text()
    leader, follower = pty.openpty()
    # A fresh pseudo-terminal is 0 columns wide, where tqdm draws nothing: give it a screen's size.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(command, stdout=follower, stderr=subprocess.DEVNULL, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=300) == 0
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_a_log_gets_a_bounded_number_of_progress_lines_and_a_terminal_the_live_bar(tmp_path: Path) -> None:
    log = _run(tmp_path, terminal=False)
    plain, multiseed = log.split("=== multiseed")
    assert "\r" not in log  # no redraws
    assert len([line for line in plain.splitlines() if LINE.match(line)]) == EPOCHS
    # Two seeds, one line per epoch each (the pre-flight Trainer has no bar).
    assert len([line for line in multiseed.splitlines() if LINE.match(line)]) == 2 * EPOCHS
    assert len(log.splitlines()) <= 2 * (3 * EPOCHS) + 40  # the lines, the model summary, a few notices
    # Each seed's model summary is logged (stderr, once per run: test_selection), not drawn by rich per seed.
    assert multiseed.count("Trainable params") == 0

    screen = _run(tmp_path, terminal=True)
    plain, multiseed = screen.split("=== multiseed")
    # tqdm redraws in place: carriage returns, and the bar's "20/20" with a rate.
    for part in (plain, multiseed):
        assert "\r" in part and re.search(r"20/20 \[[^\]]*it/s", part)
        assert not [line for line in part.splitlines() if LINE.match(line)]
