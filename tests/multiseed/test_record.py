"""The run folder is a safe record: moved, copied, shared, corrupted or weaponized, it keeps its word.

Every test here failed on the code before the record module: each names the issue-11 item it holds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from _tiny import QUIET, TinyRegressor, fit, loaders

from lightning_landscape.multiseed import MultiSeedTrainer
from lightning_landscape.multiseed.checkpoints import SafeCheckpointIO, load_checkpoint
from lightning_landscape.multiseed.lock import RunLock
from lightning_landscape.multiseed.paths import SUMMARY_JSON, PathOutsideRootError, inside
from lightning_landscape.multiseed.record import RecordError, read_record, write_record

HERE = Path(__file__).parent
EPOCHS = 2


def run(root: Path, seeds: Any = 2, **kwargs: Any) -> Any:
    return fit(root, seeds, epochs=EPOCHS, **kwargs)


def stamps(root: Path) -> dict[str, int]:
    """mtime of every file under the seed folders, by path relative to ``root``."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.glob("seed_*/**/*") if p.is_file()}


def summary(root: Path) -> dict[str, Any]:
    return json.loads((root / SUMMARY_JSON).read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-seed folder; tests work on copies of it."""
    root = tmp_path_factory.mktemp("finished") / "run"
    run(root)
    return root


def copy_of(finished: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished, target)  # copy2: mtimes kept, so "not retrained" is checkable
    return target


class _Marker:
    """Unpickling this touches a file: evidence that a load ran code from the run folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (self.path,))


# Item 1: no code runs from a file in root_dir.
def test_a_crafted_last_ckpt_runs_no_code_and_is_not_used(finished: Path, tmp_path: Path) -> None:
    root = copy_of(finished, tmp_path)
    marker = tmp_path / "pwned"
    record = read_record(root)
    assert record is not None
    record.runs[1].status, record.runs[1].score = "running", None
    write_record(record, root, [0, 1])
    last = root / "seed_1" / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}, "payload": _Marker(marker)}, last)
    with pytest.raises(RecordError, match=f"{last}: holds objects that torch refuses"):
        load_checkpoint(last)
    with pytest.raises(Exception, match=r"weights_only|Unsupported global|not allowed"):
        SafeCheckpointIO().load_checkpoint(last)
    assert not marker.exists()

    with pytest.warns(UserWarning, match="seed_1.*set aside"):
        result = run(root)
    assert not marker.exists(), "unpickling the crafted last.ckpt ran its code"
    assert [r.status for r in result.runs] == ["finished", "finished"]
    assert "resumed_from" not in result.runs[1].extra  # started afresh, the crafted file kept aside
    assert list(root.glob("seed_1.orphan-*/checkpoints/last.ckpt"))
    # The fresh seed 1 equals an untouched run of it.
    assert result.runs[1].score == pytest.approx(read_record(finished).runs[1].score, rel=1e-6)  # type: ignore[union-attr]


# Item 2: a folder can be moved or copied.
def test_a_moved_then_copied_folder_resumes_without_retraining(finished: Path, tmp_path: Path) -> None:
    original = copy_of(finished, tmp_path)
    before = stamps(original)
    moved = tmp_path / "moved"
    shutil.move(original, moved)
    result = run(moved)
    assert stamps(moved) == before, "a seed of the moved folder was retrained"
    assert result.best_model_path == str(moved / "best.ckpt")
    assert all(Path(r.best_model_path).is_relative_to(moved) for r in result.runs)
    stored = summary(moved)
    paths = [r[k] for r in stored["runs"] for k in ("best_model_path", "last_model_path", "log_dir")]
    assert all(p and not os.path.isabs(p) and not p.startswith("..") for p in paths), paths

    copied = tmp_path / "copied"
    shutil.copytree(moved, copied)
    shutil.rmtree(moved)  # the copy must not need (or read) the original's files
    again = run(copied)
    assert stamps(copied) == before
    assert [r.score for r in again.runs] == [r.score for r in result.runs]
    assert again.best_model_path == str(copied / "best.ckpt")


def test_a_path_that_leaves_root_dir_is_refused(finished: Path, tmp_path: Path) -> None:
    root = copy_of(finished, tmp_path)
    (tmp_path / "x").write_bytes(b"not yours")
    data = summary(root)
    data["runs"][0]["best_model_path"] = "../x"
    (root / SUMMARY_JSON).write_text(json.dumps(data))
    best = (root / "best.ckpt").read_bytes()
    with pytest.raises(RecordError, match=rf"{root / SUMMARY_JSON}: .*'\.\./x' leaves root_dir"):
        run(root)
    assert (root / "best.ckpt").read_bytes() == best
    with pytest.raises(PathOutsideRootError, match="is absolute"):
        inside("/etc/passwd", root)


# Item 3: finished work is never deleted without being told.
def test_another_seed_list_keeps_the_other_seeds(finished: Path, tmp_path: Path) -> None:
    root = copy_of(finished, tmp_path)
    before = stamps(root)
    other = run(root, seeds=[2])
    assert [r.seed for r in other.runs] == [2] and other.best_seed == 2  # ranks the seeds asked for
    assert sorted(r["seed"] for r in summary(root)["runs"]) == [0, 1, 2]
    after = stamps(root)
    assert {k: v for k, v in after.items() if not k.startswith("seed_2")} == before
    everything = run(root, seeds=[0, 1, 2])
    assert stamps(root) == after, "a finished seed was retrained"
    assert [r.status for r in everything.runs] == ["finished"] * 3


def test_a_folder_the_record_does_not_know_is_set_aside_not_deleted(tmp_path: Path) -> None:
    root = tmp_path / "run"
    (root / "seed_0" / "checkpoints").mkdir(parents=True)
    (root / "seed_0" / "checkpoints" / "precious.ckpt").write_bytes(b"work")
    with pytest.warns(UserWarning, match="no entry for it"):
        run(root, seeds=[0])
    (aside,) = root.glob("seed_0.orphan-*")
    assert (aside / "checkpoints" / "precious.ckpt").read_bytes() == b"work"


# Item 5: the record describes the run.
@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"model_kwargs": {"lr": 0.01}}, "model.kwargs"),
        ({"trainer": {"max_epochs": EPOCHS + 1}}, "trainer.max_epochs"),
        ({"trainer": {"gradient_clip_val": 0.5}}, "trainer.gradient_clip_val"),
    ],
)
def test_a_rerun_with_another_configuration_is_refused(
    finished: Path, tmp_path: Path, change: dict[str, Any], key: str
) -> None:
    root = copy_of(finished, tmp_path)
    before = stamps(root)
    with pytest.raises(ValueError, match=rf"another configuration \({key}: .*allow_config_change=True"):
        run(root, seeds=[0, 1, 2], **change)
    assert stamps(root) == before and not (root / "seed_2").exists()


def test_allow_config_change_ranks_them_together(finished: Path, tmp_path: Path) -> None:
    root = copy_of(finished, tmp_path)
    before = stamps(root)
    with pytest.warns(UserWarning, match="another configuration"):
        result = run(root, seeds=[0, 1, 2], model_kwargs={"lr": 0.01}, allow_config_change=True)
    assert [r.status for r in result.runs] == ["finished"] * 3
    assert {k: v for k, v in stamps(root).items() if not k.startswith("seed_2")} == before
    assert json.loads(summary(root)["fingerprint"]["model.kwargs"]) == {"lr": 0.01}


def test_a_folder_where_no_seed_finished_takes_the_new_configuration(tmp_path: Path) -> None:
    root = tmp_path / "run"
    with pytest.raises(RuntimeError, match="all 1 seeds failed"):
        run(root, seeds=[0], model_kwargs={"nan": True})
    # Nothing finished, so nothing is ranked yet: another configuration (and mode) may take the folder.
    result = run(root, seeds=[0], mode="max")
    assert result.runs[0].status == "finished" and summary(root)["mode"] == "max"


# Item 6: files are checked before they are trusted.
@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: "{\n", "not valid JSON"),
        (lambda d: "[1, 2, 3]", "top level must be an object, got list"),
        (lambda d: d.replace('"score": ', '"score": "0.001", "x": ', 1), r"score must be a finite.*'0\.001'"),
        (lambda d: d.replace('"score": ', '"score": NaN, "x": ', 1), "NaN is not a JSON value"),
        (lambda d: d.replace('"score": ', '"score": Infinity, "x": ', 1), "Infinity is not a JSON value"),
        (lambda d: d.replace('"status": "finished"', '"status": "done"', 1), "status must be one of"),
        (lambda d: d.replace('"seed": 1', '"seed": 0', 1), "seed 0 is listed twice"),
        (lambda d: d.replace('"monitor": "val_loss"', '"monitor": 3', 1), "'monitor' must be"),
    ],
)  # fmt: skip
def test_a_corrupt_summary_is_refused_naming_the_file(
    finished: Path, tmp_path: Path, edit: Any, match: str
) -> None:
    root = copy_of(finished, tmp_path)
    path = root / SUMMARY_JSON
    path.write_text(edit(path.read_text()))
    before = stamps(root)
    with pytest.raises(RecordError, match=match) as info:
        run(root)
    assert str(path) in str(info.value) and "was not used" in str(info.value)
    assert stamps(root) == before


@pytest.mark.parametrize("damage", ["truncate", "score"])
def test_an_unusable_winner_checkpoint_does_not_become_best_ckpt(
    finished: Path, tmp_path: Path, damage: str
) -> None:
    # Issue 22: the record is checked against the winner's own files before anything is believed. A broken
    # checkpoint sets the seed aside (kept as an orphan) and retrains it; a lying score is replaced by what
    # the checkpoint holds (the seed resumes from last.ckpt with nothing to train). Either way the true
    # winner stays the winner, and best.ckpt is its checkpoint.
    root = copy_of(finished, tmp_path)
    record = read_record(root)
    assert record is not None
    winner = min(record.runs.values(), key=lambda r: r.score or 0.0)
    if damage == "truncate":
        data = Path(winner.best_model_path).read_bytes()
        Path(winner.best_model_path).write_bytes(data[: len(data) // 2])
        reason = "not a readable checkpoint"
    else:  # the record claims a score its checkpoint does not hold
        data = summary(root)
        for entry in data["runs"]:
            if entry["seed"] == winner.seed:
                entry["score"] = winner.score / 10  # type: ignore[operator]
        (root / SUMMARY_JSON).write_text(json.dumps(data))
        reason = "but the record says"
    with pytest.warns(UserWarning, match=f"seed.{winner.seed}: .*{reason}"):
        result = run(root)
    assert result.best_seed == winner.seed
    assert result.best_score == pytest.approx(winner.score, rel=1e-6)
    best = result.runs[[r.seed for r in result.runs].index(winner.seed)]
    assert (root / "best.ckpt").read_bytes() == Path(best.best_model_path).read_bytes()
    if damage == "truncate":  # the broken file is kept aside, not deleted
        assert list(root.glob(f"seed_{winner.seed}.orphan-*/checkpoints/{Path(winner.best_model_path).name}"))
    assert summary(root)["best_seed"] == winner.seed


@pytest.mark.parametrize("version", [1, 3, None])
def test_a_record_of_another_version_is_refused_naming_the_file(
    finished: Path, tmp_path: Path, version: int | None
) -> None:
    root = copy_of(finished, tmp_path)
    data = summary(root)
    data["version"] = version
    (root / SUMMARY_JSON).write_text(json.dumps(data))
    before = stamps(root)
    with pytest.raises(
        RecordError, match=rf"unknown version {version!r} \(this release reads \[2\]\)"
    ) as info:
        read_record(root)
    assert str(root / SUMMARY_JSON) in str(info.value) and "was not used" in str(info.value)
    with pytest.raises(RecordError, match="unknown version"):
        run(root)
    assert stamps(root) == before


def test_unknown_blocks_and_fields_survive_a_rerun(finished: Path, tmp_path: Path) -> None:
    root = copy_of(finished, tmp_path)
    data = summary(root)
    data["barriers"] = {"matrix": [[0.0, 1.0], [1.0, 0.0]]}
    data["runs"][0]["from_the_future"] = {"a": 1}
    (root / SUMMARY_JSON).write_text(json.dumps(data))
    run(root)
    again = summary(root)
    assert again["barriers"] == data["barriers"] and again["runs"][0]["from_the_future"] == {"a": 1}


# Item 8: smaller leaks.
def test_stray_top_k_files_are_removed_after_a_resume(finished: Path, tmp_path: Path) -> None:
    root = copy_of(finished, tmp_path)
    record = read_record(root)
    assert record is not None
    record.runs[0].status, record.runs[0].score = "running", None
    write_record(record, root, [0, 1])
    stray = root / "seed_0" / "checkpoints" / "epoch=7-step=99.ckpt"
    shutil.copyfile(root / "seed_0" / "checkpoints" / "last.ckpt", stray)
    result = run(root)
    assert result.runs[0].extra["resumed_from"].endswith("last.ckpt")
    # Resumed in a copied folder: the best checkpoint and score carried over from the original place.
    assert result.runs[0].score == read_record(finished).runs[0].score  # type: ignore[union-attr]
    assert Path(result.runs[0].best_model_path).parent == root / "seed_0" / "checkpoints"
    assert not stray.exists()
    names = sorted(p.name for p in (root / "seed_0" / "checkpoints").iterdir())
    assert names == sorted([Path(result.runs[0].best_model_path).name, "last.ckpt"])


def test_stale_temporaries_are_removed_and_files_follow_the_umask(finished: Path, tmp_path: Path) -> None:
    root = copy_of(finished, tmp_path)
    stale = [root / ".summary.json.abc123.tmp", root / "seed_0" / "checkpoints" / ".last.ckpt.x1.tmp"]
    for path in stale:
        path.write_text("left by a kill")
    (root / ".preflight-k1ll3d").mkdir()
    stale.append(root / ".preflight-k1ll3d")
    old = os.umask(0o027)
    try:
        run(root)
    finally:
        os.umask(old)
    assert not any(p.exists() for p in stale)
    for name in (SUMMARY_JSON, "summary.csv", "seeds.png", "best.ckpt"):
        assert (root / name).stat().st_mode & 0o777 == 0o640, name


def test_fresh_checkpoints_follow_the_umask_and_a_late_nan_is_flagged(tmp_path: Path) -> None:
    root = tmp_path / "run"
    old = os.umask(0o022)
    try:
        result = run(root, seeds=[0], model_kwargs={"nan_from_epoch": 1})
    finally:
        os.umask(old)
    (seed,) = result.runs
    assert seed.status == "finished" and seed.extra["diverged"] is True
    modes = {p.name: p.stat().st_mode & 0o777 for p in (root / "seed_0" / "checkpoints").iterdir()}
    assert set(modes.values()) == {0o644}, modes
    assert (root / SUMMARY_JSON).stat().st_mode & 0o777 == 0o644


# Item 7: exit codes tell the truth.
@pytest.mark.slow
def test_sigterm_exits_143_and_the_rerun_resumes(tmp_path: Path) -> None:
    root, record = tmp_path / "run", tmp_path / "starts.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DROP": "0.2"}
    env.update(
        MULTISEED_KILL_SEED="1", MULTISEED_KILL_STEP="10", MULTISEED_KILL_SIGNAL=str(int(signal.SIGTERM))
    )
    cmd = [sys.executable, str(HERE / "_kill_job.py"), str(root), str(record)]
    killed = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=240)
    assert killed.returncode == 128 + signal.SIGTERM, killed.stderr[-3000:]
    assert "seeds [1, 2] unfinished; rerun the same command" in killed.stderr
    assert [r["status"] for r in summary(root)["runs"]] == ["finished", "running", "pending"]
    env.pop("MULTISEED_KILL_SEED")
    rerun = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert summary(root)["runs"][1]["extra"]["resumed_from"].endswith("last.ckpt")


def test_an_interruption_leaves_the_seed_resumable(tmp_path: Path) -> None:
    from _tiny import KillAt

    from lightning_landscape.multiseed.trainer import MultiSeedInterrupted

    train, val = loaders()
    trainer = MultiSeedTrainer(
        seeds=[0, 1], root_dir=tmp_path, max_epochs=EPOCHS, callbacks=[KillAt(1, 5, signal.SIGINT)], **QUIET
    )
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(MultiSeedInterrupted) as info:
            trainer.fit(TinyRegressor, train_dataloaders=train, val_dataloaders=val)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after a Ctrl-C
    assert info.value.code == 130 and "seeds [1] unfinished" in str(info.value)
    assert [r["status"] for r in summary(tmp_path)["runs"]] == ["finished", "running"]


@pytest.mark.parametrize(("content", "code"), [("{\n", 2), (None, 3)])
def test_the_cli_reports_a_refused_folder_with_its_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, code: int
) -> None:
    from lightning_landscape.cli import main

    root = tmp_path / "ms"
    root.mkdir()
    if content is not None:
        (root / SUMMARY_JSON).write_text(content)
    config = Path(__file__).resolve().parents[2] / "configs" / "shallow_relu.yaml"
    args = ["multiseed", "--config", str(config), "--trainer.max_steps=2", f"--root_dir={root}", "--seeds=1"]
    with RunLock(root) if content is None else nullcontext(), pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == code
    err = capsys.readouterr().err
    expected = (
        f"{root / SUMMARY_JSON}: not valid JSON" if content is not None else f"pid {os.getpid()} on host"
    )
    assert expected in err and "Traceback" not in err
    assert not list(root.glob("seed_*"))
