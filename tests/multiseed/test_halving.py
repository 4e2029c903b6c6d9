"""Successive halving of seeds: the schedule against plain runs of the same seeds, resume, fingerprint."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning
import pytest
from _tiny import fit

from lightning_landscape.multiseed.config import MultiSeedConfig
from lightning_landscape.multiseed.halving import schedule_counts
from lightning_landscape.multiseed.halving_simulation import survivors_after
from lightning_landscape.multiseed.paths import SUMMARY_JSON
from lightning_landscape.multiseed.selection import rank_by_validation

HERE = Path(__file__).parent
NO_LOG = {"logger": False}


def _files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("seed_*/**/*") if p.is_file()}


# On lightning 2.4 (the declared floor, `make test-min`) a run resumed from an epoch-end `last.ckpt` with a
# larger `max_epochs` ends 2.4% away from a plain run of the same seed (measured on this test); lightning 2.6
# resumes it exactly (2.5 not measured). The other halving tests pass on 2.4.
_EXACT_RESUME = tuple(int(p) for p in lightning.__version__.split(".")[:2]) >= (2, 5)


@pytest.mark.skipif(not _EXACT_RESUME, reason="lightning < 2.5 does not resume a longer run exactly")
def test_halving_matches_plain_runs_of_the_same_seeds(tmp_path: Path) -> None:
    """Ground truth: rung-0 scores are plain 1-epoch runs' scores; the survivors are the best
    ceil(keep * n) of them; each survivor's final score is a plain 4-epoch run's (checkpoints at epoch
    ends make a resume exact)."""
    halving = fit(
        tmp_path / "h", seeds=6, epochs=4, prune_rungs=[1, 2], prune_keep=0.5, quiet=True, trainer=NO_LOG
    )
    short = fit(tmp_path / "short", seeds=6, epochs=1, quiet=True, trainer=NO_LOG)
    rung0 = [r.extra["rung_scores"][0] for r in halving.runs]
    assert rung0 == pytest.approx(short.scores, rel=1e-6)
    order = rank_by_validation(rung0, "min")
    survivors1 = sorted(order[: survivors_after(6, 0.5)])
    assert [r.seed for r in halving.runs if len(r.extra["rung_scores"]) >= 2] == survivors1
    finished = [r for r in halving.runs if r.status == "finished"]
    assert len(finished) == schedule_counts(6, 2, 0.5)[-1] == 2
    plain = fit(tmp_path / "plain", seeds=[r.seed for r in finished], epochs=4, quiet=True, trainer=NO_LOG)
    assert [r.score for r in finished] == pytest.approx(plain.scores, rel=1e-6)
    pruned = [r for r in halving.runs if r.status == "pruned"]
    assert len(pruned) == 4
    for run in pruned:
        # A pruned seed keeps its folder and its score at the rung where it stopped.
        assert run.score == run.extra["rung_scores"][run.extra["pruned_rung"]]
        assert (tmp_path / "h" / f"seed_{run.seed}" / "checkpoints" / "last.ckpt").is_file()
    assert halving.best_seed == min(finished, key=lambda r: r.score).seed
    block = json.loads((tmp_path / "h" / SUMMARY_JSON).read_text())["halving"]
    assert block["schedule"] == [1, 2, 4] and block["entered"] == [6, 3, 2]
    assert len(block["first_rung_best_of_k"]["expected"]) == 6

    # A rerun trains nothing, deletes nothing and gives the same result.
    before = _files(tmp_path / "h")
    again = fit(
        tmp_path / "h", seeds=6, epochs=4, prune_rungs=[1, 2], prune_keep=0.5, quiet=True, trainer=NO_LOG
    )
    assert _files(tmp_path / "h") == before
    assert [(r.status, r.score) for r in again.runs] == [(r.status, r.score) for r in halving.runs]

    # The schedule is part of the fingerprint: another one is refused, naming it.
    with pytest.raises(ValueError, match="prune"):
        fit(tmp_path / "h", seeds=6, epochs=4, prune_rungs=[1, 3], prune_keep=0.5, quiet=True, trainer=NO_LOG)
    with pytest.raises(ValueError, match="prune"):
        fit(tmp_path / "h", seeds=6, epochs=4, quiet=True, trainer=NO_LOG)
    assert _files(tmp_path / "h") == before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prune_rungs": [2, 1], "trainer_kwargs": {"max_epochs": 4}}, "strictly increasing"),
        ({"prune_rungs": [0], "trainer_kwargs": {"max_epochs": 4}}, "prune_rungs"),
        ({"prune_rungs": [4], "trainer_kwargs": {"max_epochs": 4}}, "max_epochs"),
        ({"prune_rungs": [10], "prune_unit": "steps", "trainer_kwargs": {"max_epochs": 4}}, "max_steps"),
        ({"prune_rungs": [1], "executor": "vectorized", "trainer_kwargs": {"max_epochs": 4}}, "vectorized"),
        ({"prune_keep": 0.0}, "prune_keep"),
        ({"prune_keep": 1.5}, "prune_keep"),
        ({"prune_unit": "batches"}, "prune_unit"),
        ({"prune_rungs": [1], "trainer_kwargs": {"max_epochs": 4, "max_steps": 9}}, "max_steps"),
    ],
)
def test_bad_schedules_are_refused_naming_the_argument(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MultiSeedConfig(**kwargs)


def test_schedule_in_steps(tmp_path: Path) -> None:
    """Rungs in steps: validation at every epoch end (4 batches) puts a checkpoint at each rung."""
    result = fit(
        tmp_path, seeds=3, epochs=None, prune_rungs=[4], prune_keep=1 / 3, prune_unit="steps", quiet=True,
        trainer={"max_steps": 8, "logger": False},
    )  # fmt: skip
    assert sorted(r.status for r in result.runs) == ["finished", "pruned", "pruned"]
    best = result.runs[result.best_seed]
    assert len(best.extra["rung_scores"]) == 2


def _job(root: Path, kill: tuple[int, int] | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MULTISEED_KILL_SEED", None)
    if kill is not None:
        env.update(MULTISEED_KILL_SEED=str(kill[0]), MULTISEED_KILL_STEP=str(kill[1]))
    cmd = [sys.executable, str(HERE / "_halving_job.py"), str(root)]
    return subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=300)


def _result(proc: subprocess.CompletedProcess[str]) -> Any:
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.slow
def test_halving_killed_twice_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    reference = _job(tmp_path / "ref", None)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = _result(reference)
    finalists = [int(s) for s, (status, _, _) in expected.items() if status == "finished"]
    rng = random.Random(19)
    # 4 batches per epoch: one kill inside the first rung (steps 1-3), one in the last (steps 9-15).
    kills = [(rng.randrange(6), rng.randrange(1, 4)), (rng.choice(finalists), rng.randrange(9, 16))]
    root = tmp_path / "run"
    pruned_files: dict[Path, int] = {}
    for kill in kills:
        killed = _job(root, kill)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        summary = json.loads((root / SUMMARY_JSON).read_text())
        pruned = [r["seed"] for r in summary["runs"] if r["status"] == "pruned"]
        assert all(p.exists() for p in pruned_files), "a pruned seed's files were deleted"
        pruned_files = {p: m for p, m in _files(root).items() if any(f"seed_{s}" in p.parts for s in pruned)}
    rerun = _job(root, None)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _files(root).items() >= pruned_files.items(), "a pruned seed was retrained or deleted"
    got = _result(rerun)
    assert {s: v[0] for s, v in got.items()} == {s: v[0] for s, v in expected.items()}
    for s, (_, score, rungs) in expected.items():
        assert got[s][1] == pytest.approx(score, rel=1e-6) and got[s][2] == pytest.approx(rungs, rel=1e-6)


@pytest.mark.slow
def test_halving_on_ray_matches_sequential(tmp_path: Path) -> None:
    """Each stage is one batch of Ray tasks: the same statuses, rung scores and winner as in-process."""
    ray = pytest.importorskip("ray")
    kwargs: dict[str, Any] = {"seeds": 4, "epochs": 3, "prune_rungs": [1], "prune_keep": 0.5, "quiet": True}
    expected = fit(tmp_path / "seq", trainer=NO_LOG, **kwargs)
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        result = fit(tmp_path / "ray", executor="ray", max_concurrent=2, trainer=NO_LOG, **kwargs)
    finally:
        ray.shutdown()
    assert [r.status for r in result.runs] == [r.status for r in expected.runs]
    for got, want in zip(result.runs, expected.runs, strict=True):
        assert got.extra["rung_scores"] == pytest.approx(want.extra["rung_scores"], rel=1e-6)
    assert result.best_seed == expected.best_seed
