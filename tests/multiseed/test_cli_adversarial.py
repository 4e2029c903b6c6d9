"""``lightning-landscape`` against bad input, other data and a full disk (issue 22, rows 7-9 and items 5, 7).

The command is run as the console script (a real subprocess) where its exit code and stderr are the point,
and through its entry function ``lightning_landscape.cli.main`` where a case only needs the code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _adversarial import REPO, crafted


def xfail(why: str) -> pytest.MarkDecorator:
    """Failed on the code before issue 22's fix, for the reason given."""
    return pytest.mark.xfail(strict=True, reason=f"issue 22: {why}")


CONFIG = REPO / "configs" / "shallow_relu.yaml"
# A few steps of the shallow ReLU example: enough for a checkpoint, seconds per seed.
SMALL = [
    "--trainer.max_steps=4",
    "--data.init_args.steps_per_epoch=2",
    "--data.init_args.val_size=64",
    "--quiet=true",
    "--test=none",
]


def console() -> list[str]:
    """The installed ``lightning-landscape`` script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).parent / "lightning-landscape"
    return [str(script)] if script.exists() else [sys.executable, "-m", "lightning_landscape.cli"]


def env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*console(), *args], cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout
    )


def error_line(stderr: str, command: str) -> str:
    """The one error line of ``stderr`` (``lightning-landscape <command>: error: ...``); no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [
        line for line in stderr.splitlines() if line.startswith(f"lightning-landscape {command}: error:")
    ]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


# Row 7 / item 5: the fingerprint holds the datamodule's class and arguments, from the CLI too.
@pytest.mark.slow
def test_the_cli_refuses_a_rerun_with_other_data_naming_the_keys(tmp_path: Path) -> None:
    root = tmp_path / "ms"
    common = ["multiseed", "--config", str(CONFIG), *SMALL, f"--root_dir={root}"]
    first = cli(*common, "--seeds=1", "--data.init_args.batch_size=32")
    assert first.returncode == 0, first.stderr[-3000:]
    fingerprint = json.loads((root / "summary.json").read_text())["fingerprint"]
    assert fingerprint["datamodule"].endswith("ShallowReLUDataModule"), fingerprint
    assert json.loads(fingerprint["datamodule.kwargs"])["batch_size"] == 32, fingerprint

    other = cli(*common, "--seeds=2", "--data.init_args.batch_size=16")
    assert other.returncode == 2, (other.returncode, other.stderr[-3000:])
    line = error_line(other.stderr, "multiseed")
    assert "datamodule.kwargs" in line and "batch_size" in line, line
    assert not (root / "seed_1").exists(), "a seed trained on other data"


# Row 8 / item 7: `landscape` exits 2 with one line naming the file.
@pytest.fixture(scope="module")
def fitting_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint that fits the config's model (``ShallowReLU(hidden=[20])``)."""
    from examples.shallow_relu import ShallowReLU

    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    torch.manual_seed(0)
    torch.save({"state_dict": ShallowReLU(hidden=[20]).state_dict()}, path)
    return path


def landscape(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[Any, str]:
    """Runs ``lightning-landscape landscape`` through its entry function: ``(exit code, stderr)``."""
    from lightning_landscape.cli import main

    base = ["landscape", "--config", str(CONFIG), "--steps=3", "--data.init_args.val_size=64"]
    try:
        main([*base, *args])
        code: Any = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("content", ["crafted", "random", "empty"])
def test_landscape_exits_2_naming_a_bad_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    path, marker = tmp_path / "bad.ckpt", tmp_path / "pwned"
    if content == "crafted":
        crafted(path, marker)
    elif content == "random":
        path.write_bytes(os.urandom(4096))
    else:
        path.write_bytes(b"")
    code, err = landscape(capsys, f"--checkpoint={path}", f"--out_dir={tmp_path / 'out'}")
    assert code == 2, err[-3000:]
    assert str(path) in error_line(err, "landscape")
    assert not marker.exists(), "the crafted checkpoint ran code"
    assert not (tmp_path / "out").exists(), "files were written for a refused checkpoint"


def test_landscape_exits_2_for_an_out_dir_that_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fitting_checkpoint: Path
) -> None:
    out = tmp_path / "a_file"
    out.write_text("keep me")
    code, err = landscape(capsys, f"--checkpoint={fitting_checkpoint}", f"--out_dir={out}")
    assert code == 2, err[-3000:]
    assert str(out) in error_line(err, "landscape")
    assert out.read_text() == "keep me"


def test_landscape_refuses_num_batches_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fitting_checkpoint: Path
) -> None:
    code, err = landscape(
        capsys, f"--checkpoint={fitting_checkpoint}", f"--out_dir={tmp_path / 'out'}", "--num_batches=0"
    )
    assert code == 2, err[-3000:]
    assert "num_batches" in err
    assert not (tmp_path / "out").exists()


def test_landscape_on_a_fitting_checkpoint_still_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fitting_checkpoint: Path
) -> None:
    """The control: the refusals above are not a refusal of everything."""
    code, err = landscape(capsys, f"--checkpoint={fitting_checkpoint}", f"--out_dir={tmp_path / 'out'}")
    assert code == 0, err[-3000:]
    assert (tmp_path / "out" / "landscape_plane.npz").is_file()


# Row 9 / item 7: a full disk ends in one line naming the file, with its own exit code; the rerun completes.
def _private_tmpfs() -> list[str] | None:
    """The ``unshare`` prefix that mounts a private tmpfs; ``None`` where this machine does not allow it."""
    if shutil.which("unshare") is None or sys.platform != "linux":
        return None
    prefix = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
    return prefix if probe.returncode == 0 else None


@pytest.mark.slow
def test_a_full_disk_ends_in_one_line_naming_the_file_and_the_rerun_completes(tmp_path: Path) -> None:
    from lightning_landscape.cli import main

    prefix = _private_tmpfs()
    if prefix is None:
        pytest.skip("needs a private tmpfs (unshare -m and mount)")
    root, mount, after = tmp_path / "ms", tmp_path / "mnt", tmp_path / "after"
    args = ["multiseed", "--config", str(CONFIG), *SMALL, "--seeds=1"]
    main([*args, f"--root_dir={root}"])  # a finished folder
    mount.mkdir()
    command = " ".join(f"'{a}'" for a in [*console(), *args, f"--root_dir={mount / 'ms'}"])
    script = (
        f"mount -t tmpfs -o size=4m tmpfs '{mount}' && cp -a '{root}' '{mount}/ms' && "
        f"(dd if=/dev/zero of='{mount}/filler' bs=64k 2>/dev/null; true) && "
        f"{command}; echo $? > '{tmp_path / 'rc'}'; cp -a '{mount}/ms' '{after}'"
    )
    full = subprocess.run(
        [*prefix, "sh", "-c", script], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300
    )
    code = int((tmp_path / "rc").read_text())
    assert code == 4, (code, full.stderr[-3000:])
    line = error_line(full.stderr, "multiseed")
    assert str(mount / "ms") in line and "No space left on device" in line, line
    # The record stays readable and a rerun with space completes without training.
    main([*args, f"--root_dir={after}"])
    assert json.loads((after / "summary.json").read_text())["runs"][0]["status"] == "finished"
