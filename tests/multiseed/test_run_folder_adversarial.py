"""The run folder against a lying record, symlinks and broken files (issue 22), through public entry points
only: ``MultiSeedTrainer(...).fit``, the files of the folder, ``RecordError``, the result classes' ``load``,
real signals in a subprocess.

Each test names the row of the issue's table (or the item of "What to build") it holds. The invariants:
a checkpoint in the folder is never lost (kept, resumed, or set aside as ``seed_<k>.orphan-<time>/``),
nothing outside the folder is ever written, every broken input ends in ``RecordError`` or a ``ValueError``
naming the file, and a rerun either resumes or refuses.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _adversarial import (
    HERE,
    REPO,
    Marker,
    NoTraining,
    checkpoints,
    crafted,
    lost,
    run,
    stored_score,
    summary,
    tree,
    write_summary,
)
from torch import nn

from lightning_landscape.landscape import BarrierResult, LineResult, PlaneResult, trajectory_plane
from lightning_landscape.multiseed import RecordError


def xfail(why: str) -> pytest.MarkDecorator:
    """Failed on the code before issue 22's fix, for the reason given."""
    return pytest.mark.xfail(strict=True, reason=f"issue 22: {why}")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-seed folder (no test, no barriers); every test works on a copy."""
    root = tmp_path_factory.mktemp("finished") / "run"
    run(root, test="none")
    return root


def copy_of(finished: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished, target, symlinks=True)  # copy2 keeps mtimes
    return target


def outside_dir(tmp_path: Path, **files: str) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def no_training() -> dict[str, Any]:
    return {"callbacks": [NoTraining()]}


def assert_truthful(result: Any, root: Path) -> None:
    """Every finished seed's score is what its own best checkpoint, inside its own folder, holds."""
    for r in result.runs:
        assert r.status == "finished", (r.seed, r.status, r.error)
        own = (root / f"seed_{r.seed}").resolve()
        assert Path(r.best_model_path).resolve().is_relative_to(own), (r.seed, r.best_model_path)
        assert stored_score(r.best_model_path) == pytest.approx(r.score, rel=1e-6)
    assert stored_score(result.best_model_path) == pytest.approx(result.best_score, rel=1e-6)


# Row 1 / item 1: a record that lies about a finished seed never gets its folder deleted.
@pytest.mark.parametrize(
    "status",
    [
        "pending",  # before: the finished folder was deleted and retrained
        "running",  # resumed before too: the control
    ],
)
def test_a_finished_seed_the_record_calls_unfinished_is_resumed_not_deleted(
    finished: Path, tmp_path: Path, status: str
) -> None:
    root = copy_of(finished, tmp_path)
    truth = {r["seed"]: r["score"] for r in summary(root)["runs"]}
    data = summary(root)
    data["runs"][1]["status"] = status
    write_summary(root, data)
    before = checkpoints(root)
    result = run(root, test="none", trainer=no_training())
    assert not lost(before, root), "a finished seed's checkpoint was deleted"
    assert_truthful(result, root)  # resumed from its own checkpoint: nothing retrained
    assert result.runs[1].score == pytest.approx(truth[1], rel=1e-6)


def test_a_seed_recorded_failed_is_retried_with_its_folder_set_aside(finished: Path, tmp_path: Path) -> None:
    root = copy_of(finished, tmp_path)
    truth = {r["seed"]: r["score"] for r in summary(root)["runs"]}
    data = summary(root)
    data["runs"][1]["status"] = "failed"
    write_summary(root, data)
    before = checkpoints(root)
    with pytest.warns(UserWarning, match="seed_1.*set aside"):
        result = run(root, test="none")
    assert not lost(before, root), "the retried seed's old checkpoints were deleted"
    assert list(root.glob("seed_1.orphan-*/checkpoints/last.ckpt"))
    assert_truthful(result, root)
    assert result.runs[1].score == pytest.approx(truth[1], rel=1e-6)  # a seed is deterministic


@pytest.mark.parametrize(
    "target",
    [
        "summary.json",
        "seeds.png",
        "best.ckpt",
        "seed_0/checkpoints/last.ckpt",
        "seed_1/checkpoints/gone.ckpt",
    ],
)
def test_a_finished_seed_whose_record_points_elsewhere_keeps_its_checkpoint(
    finished: Path, tmp_path: Path, target: str
) -> None:
    root = copy_of(finished, tmp_path)
    data = summary(root)
    data["runs"][1]["best_model_path"] = target
    write_summary(root, data)
    before = checkpoints(root)
    try:
        result = run(root, test="none", trainer=no_training())
    except RecordError as err:  # refusing is fine; anything else (UnpicklingError, ...) is not
        assert "summary.json" in str(err)
        result = None
    assert not lost(before, root)
    if result is not None:
        assert_truthful(result, root)


def test_a_lying_winner_score_is_not_believed_and_its_folder_survives(finished: Path, tmp_path: Path) -> None:
    root = copy_of(finished, tmp_path)
    data = summary(root)
    best, truth = data["best_seed"], data["best_score"]
    next(r for r in data["runs"] if r["seed"] == best)["score"] = truth - 1.0
    write_summary(root, data)
    before = checkpoints(root)
    for _ in range(2):  # the second rerun must not act on what the first one concluded
        try:
            result = run(root, test="none", trainer=no_training())
        except RecordError:
            result = None
        assert not lost(before, root)
        if result is not None:
            assert (result.best_seed, result.best_score) == (best, pytest.approx(truth, rel=1e-6))
            assert_truthful(result, root)


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def mutate(data: dict[str, Any]) -> None:
        node: Any = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


# Row 1 / item 3: nonsense numbers and paths in the record are schema errors, never a raw crash.
NONSENSE = {
    "path too long": _set(("runs", 0, "best_model_path"), "seed_0/" + "x" * 5000),
    "name too long": _set(("runs", 0, "last_model_path"), "seed_0/checkpoints/" + "y" * 300 + ".ckpt"),
    "null byte": _set(("runs", 0, "best_model_path"), "seed_0/checkpoints/\x00.ckpt"),
    "huge score": _set(("runs", 0, "score"), 10**400),
    "huge wall_time": _set(("runs", 1, "wall_time"), 10**400),
    "negative best_step": _set(("runs", 0, "extra", "best_step"), -3),
    "boolean best_step": _set(("runs", 0, "extra", "best_step"), True),
    "huge last_step": _set(("runs", 1, "extra", "last_step"), 10**400),
    "text last_step": _set(("runs", 1, "extra", "last_step"), "7"),
    "text score": _set(("runs", 0, "score"), "0.1"),  # held before: the control
}
# What each did before issue 22's fix (the control aside).
NONSENSE_BEFORE = {
    "path too long": "OSError: File name too long",
    "name too long": "taken without a check",
    "null byte": "ValueError: embedded null byte",
    "huge score": "OverflowError",
    "huge wall_time": "OverflowError",
    "negative best_step": "ValueError from still_improving",
    "boolean best_step": "ValueError from still_improving",
    "huge last_step": "OverflowError",
    "text last_step": "taken without a check",
}


@pytest.mark.parametrize("name", list(NONSENSE))
def test_nonsense_in_the_record_is_a_record_error(finished: Path, tmp_path: Path, name: str) -> None:
    root = copy_of(finished, tmp_path)
    data = summary(root)
    NONSENSE[name](data)
    write_summary(root, data)
    before = checkpoints(root)
    with pytest.raises(RecordError, match=re.escape(str(root / "summary.json"))):
        run(root, test="none")
    assert not lost(before, root)


# Row 2 / item 2: never written through a link, nothing outside the folder.
def test_a_symlinked_lock_never_touches_its_target(finished: Path, tmp_path: Path) -> None:
    root = copy_of(finished, tmp_path)
    outside = outside_dir(tmp_path, **{"precious.txt": "keep me"})
    (root / ".lock").unlink(missing_ok=True)
    (root / ".lock").symlink_to(outside / "precious.txt")
    snapshot = tree(outside)
    try:
        run(root, test="none")
    except RecordError as err:
        assert ".lock" in str(err)
    assert tree(outside) == snapshot, "the run wrote through the .lock link"


OUTPUTS = ("summary.csv", "seeds.png", "best_of_k.png", "best.ckpt", "barriers.png", "interpolation.png")


def test_symlinked_outputs_never_write_outside_the_folder(finished: Path, tmp_path: Path) -> None:
    root = copy_of(finished, tmp_path)
    outside = outside_dir(tmp_path, **{name: f"precious {name}" for name in OUTPUTS})
    for name in OUTPUTS:
        (root / name).unlink(missing_ok=True)
        (root / name).symlink_to(outside / name)
    snapshot = tree(outside)
    try:
        run(root, test="none", barriers=True)
    except RecordError as err:
        assert any(name in str(err) for name in OUTPUTS)
    else:
        assert not any((root / name).is_symlink() for name in OUTPUTS)
    assert tree(outside) == snapshot, "a figure or file was written through a link"


def test_a_record_linked_out_of_the_folder_is_refused_by_name(finished: Path, tmp_path: Path) -> None:
    root = copy_of(finished, tmp_path)
    outside = outside_dir(tmp_path, **{"summary.json": (root / "summary.json").read_text()})
    (root / "summary.json").unlink()
    (root / "summary.json").symlink_to(outside / "summary.json")
    snapshot = tree(outside)
    with pytest.raises(RecordError, match=r"summary\.json"):
        run(root, test="none")
    assert tree(outside) == snapshot


@pytest.mark.parametrize("link", ["seed_2", "seed_0/checkpoints"])
def test_a_seed_folder_that_is_a_link_is_refused_by_name(finished: Path, tmp_path: Path, link: str) -> None:
    """Before: ``seed_2`` linked elsewhere was moved aside and the seed trained; a linked ``checkpoints``
    folder that stays inside the folder was written through. Now both are refused by name, before work."""
    root = copy_of(finished, tmp_path)
    outside = outside_dir(tmp_path)
    target = outside / "elsewhere"
    if link == "seed_0/checkpoints":  # a link that stays inside root: seed 0 would write into seed 1's
        shutil.rmtree(root / link)
        (root / link).symlink_to(root / "seed_1" / "checkpoints", target_is_directory=True)
    else:
        target.mkdir()
        (root / link).symlink_to(target, target_is_directory=True)
    snapshot, before = tree(outside), checkpoints(root)
    with pytest.raises(RecordError, match=re.escape(str(root / link))):
        run(root, seeds=3, test="none")
    assert tree(outside) == snapshot and not lost(before, root)


def test_a_lock_that_is_a_directory_is_a_record_error(finished: Path, tmp_path: Path) -> None:
    root = copy_of(finished, tmp_path)
    (root / ".lock").unlink(missing_ok=True)
    (root / ".lock").mkdir()
    with pytest.raises(RecordError, match=re.escape(str(root / ".lock"))):
        run(root, test="none")


# Row 2 / items 1 and 3: a broken non-winner checkpoint sets that seed aside; the run goes on.
@pytest.mark.parametrize("damage", ["truncated", "garbage", "crafted"])
def test_a_broken_non_winner_checkpoint_sets_that_seed_aside(
    finished: Path, tmp_path: Path, damage: str
) -> None:
    root = copy_of(finished, tmp_path)
    data = summary(root)
    other = next(r for r in data["runs"] if r["seed"] != data["best_seed"])
    path, marker = root / other["best_model_path"], tmp_path / "pwned"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        crafted(path, marker)
    before = checkpoints(root)
    with pytest.warns(UserWarning, match=f"seed_{other['seed']}.*set aside"):
        result = run(root, barriers=True, test="all", test_loader=True)
    assert not marker.exists(), "loading the crafted checkpoint ran its code"
    assert not lost(before, root), "the broken checkpoint must be kept aside, not deleted"
    assert list(root.glob(f"seed_{other['seed']}.orphan-*/checkpoints/{path.name}"))
    assert result.best_seed == data["best_seed"]
    assert_truthful(result, root)


# Row 3 / item 3: a broken result file ends in a ValueError naming it.
def _results() -> dict[str, Any]:
    ts = torch.linspace(0, 1, 3, dtype=torch.float64)
    return {
        "plane": PlaneResult(ts, ts, torch.ones(3, 3, dtype=torch.float64), 1.0),
        "line": LineResult(ts, ts, 1.0),
        "barrier": BarrierResult(ts, ts, 0.0, 1.0, 0.1, 0.5),
    }


RESULT_DAMAGE = ("empty", "truncated", "garbage", "crafted", "bad meta", "missing field")


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
@pytest.mark.parametrize("damage", RESULT_DAMAGE)
@pytest.mark.parametrize("kind", ["plane", "line", "barrier"])
def test_a_broken_result_file_is_a_value_error_naming_it(
    tmp_path: Path, kind: str, damage: str, suffix: str
) -> None:
    result = _results()[kind]
    path, marker = tmp_path / f"result{suffix}", tmp_path / "pwned"
    result.save(path)
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(1).bytes(2048))
    elif damage == "crafted":
        if suffix == ".npz":  # an object array: only a pickle can hold it
            np.savez(path, kind=np.array(kind), payload=np.array([Marker(marker)], dtype=object))
        else:
            torch.save({**result.to_dict(), "meta": {"x": Marker(marker)}}, path)
    elif damage == "bad meta":
        data = result.to_dict()
        if suffix == ".npz":
            arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else np.array(v) for k, v in data.items()}
            arrays["meta"] = np.array("{not json")
            np.savez(path, **arrays)
        else:
            torch.save({**data, "meta": "{not json"}, path)
    else:  # missing field
        data = result.to_dict()
        data.pop("losses")
        if suffix == ".npz":
            np.savez(
                path,
                **{
                    k: v.numpy() if isinstance(v, torch.Tensor) else np.array(str(v)) for k, v in data.items()
                },
            )
        else:
            torch.save(data, path)
    cls = type(result)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        cls.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "crafted", "empty", "nan"])
def test_trajectory_plane_names_a_broken_iterate(tmp_path: Path, damage: str) -> None:
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"iterate_{i}.pt")
        torch.save({k: v + 0.1 * i * torch.randn_like(v) for k, v in model.state_dict().items()}, paths[-1])
    broken, marker = paths[1], tmp_path / "pwned"
    if damage == "truncated":
        broken.write_bytes(broken.read_bytes()[:100])
    elif damage == "crafted":
        crafted(broken, marker)
    elif damage == "empty":
        broken.write_bytes(b"")
    else:
        torch.save({k: torch.full_like(v, float("nan")) for k, v in model.state_dict().items()}, broken)
    with pytest.raises(ValueError, match=re.escape(str(broken))):
        trajectory_plane(paths, model, lambda m, b: (m(b) ** 2).mean(), [torch.randn(8, 2)], steps=3)
    assert not marker.exists()


# Row 4 / item 4: signals after training exit 128 + signal, and the folder stays resumable.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("phase", "signum"),
    [
        ("test", signal.SIGTERM),
        ("barriers", signal.SIGTERM),
        ("report", signal.SIGINT),
    ],
)
def test_a_signal_after_training_exits_128_plus_the_signal(
    finished: Path, tmp_path: Path, phase: str, signum: int
) -> None:
    root = copy_of(finished, tmp_path)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        **os.environ,
        "SIGNAL_AT": phase,
        "SIGNAL": str(int(signum)),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": path,
    }
    cmd = [sys.executable, str(HERE / "_adversarial.py"), str(root)]
    killed = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=240)
    assert killed.returncode == 128 + signum, (killed.returncode, killed.stderr[-3000:])
    assert "rerun" in killed.stderr and "RESULT" not in killed.stdout
    before = checkpoints(root)
    result = run(root, barriers=True, test="best", test_loader=True, trainer=no_training())
    assert not lost(before, root)
    assert_truthful(result, root)
    assert result.best_test_score is not None


# Row 5 / items 5 and 6: an architecture change under allow_config_change is refused before training.
@pytest.mark.parametrize("after", ["barriers", "test"])
def test_allow_config_change_with_another_architecture_is_refused_before_training(
    finished: Path, tmp_path: Path, after: str
) -> None:
    root = copy_of(finished, tmp_path)
    steps: dict[str, Any] = (
        {"barriers": True} if after == "barriers" else {"test": "best", "test_loader": True}
    )
    with pytest.raises(ValueError) as info:
        run(root, seeds=3, model_kwargs={"hidden": 8}, allow_config_change=True, **steps)
    message = str(info.value)
    assert "[0, 1]" in message and "model.kwargs" in message, message
    assert not (root / "seed_2").exists(), "a seed trained before the refusal"


# Row 6 / item 6: unknown model arguments are refused before any seed starts.
def _factory(hidden: int = 16) -> nn.Module:
    from _adversarial import SignalModel

    return SignalModel(hidden=hidden)


@pytest.mark.parametrize("model", ["class", "factory"])
def test_unknown_model_kwargs_are_refused_before_any_seed_starts(tmp_path: Path, model: str) -> None:
    from _adversarial import SignalModel

    target = SignalModel if model == "class" else _factory
    with pytest.raises((TypeError, ValueError), match="hiden"):
        run(tmp_path / "run", model=target, model_kwargs={"hiden": 8}, test="none")
    assert not list((tmp_path / "run").glob("seed_*"))
