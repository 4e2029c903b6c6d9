r"""Successive halving of seeds: start many, continue only the best at each rung.

With ``prune_rungs=[r_1, ..., r_m]`` (in ``prune_unit``) and the Trainer's full budget
:math:`r_{m+1}` (``max_epochs`` or ``max_steps``), :class:`~lightning_landscape.multiseed.MultiSeedTrainer`
trains every seed to :math:`r_1`, ranks the :math:`n_1` seeds that reached it by their best ``monitor``
so far (the checkpoint score, ties to the earlier seed in the asked order), keeps the best
:math:`n_2 = \lceil \text{keep}\cdot n_1 \rceil` (at least one;
:func:`~lightning_landscape.multiseed.halving_simulation.survivors_after`) and resumes them from their
``last.ckpt`` to :math:`r_2`, and so on; the survivors of the last rung train to the end and are the
seeds ranked for the winner. Dodge et al. (2020) found that seeds bad at 20-30% of training rarely end
best; :func:`~lightning_landscape.multiseed.halving_simulation.halving_simulation` measures that on
fully trained seeds.

The record is the schedule's state: a seed that completed rung :math:`i` carries
``extra["rung_done"] = i`` and ``extra["rung_scores"]`` (its score at each rung it reached), waiting as
``"pending"`` between rungs; a pruned seed is ``"pruned"`` with ``extra["pruned_rung"]`` and its rung
score in ``score``, and its folder is kept. The pruning is a pure function of the recorded rung scores,
so a run killed at any moment and rerun continues the same schedule to the same result. A seed that
fails drops out of the schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from lightning_landscape.multiseed.checkpoints import check_checkpoint
from lightning_landscape.multiseed.config import MultiSeedConfig
from lightning_landscape.multiseed.executors import SeedJob, SeedTask
from lightning_landscape.multiseed.halving_simulation import survivors_after
from lightning_landscape.multiseed.paths import last_checkpoint, seed_dir
from lightning_landscape.multiseed.plan import _prior_wall_time, set_aside
from lightning_landscape.multiseed.record import Record
from lightning_landscape.multiseed.result import SeedRun
from lightning_landscape.multiseed.selection import best_of_k, rank_by_validation

RUNG_DONE = "rung_done"
RUNG_SCORES = "rung_scores"
PRUNED_RUNG = "pruned_rung"


def rung_done(run: SeedRun | None) -> int:
    """The index of the last rung ``run`` completed (``-1``: none).

    Example:
        >>> rung_done(SeedRun(0, "pending", extra={"rung_done": 1})), rung_done(None)
        (1, -1)
    """
    if run is None:
        return -1
    value = run.extra.get(RUNG_DONE, -1)
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def schedule_counts(num_seeds: int, rungs: int, keep: float) -> list[int]:
    """Seeds that train in each stage (``rungs + 1`` stages) when none fails.

    Example:
        >>> schedule_counts(64, 2, 1 / 4)
        [64, 16, 4]
    """
    counts = [num_seeds]
    for _ in range(rungs):
        counts.append(survivors_after(counts[-1], keep))
    return counts


def rung_job(job: SeedJob, config: MultiSeedConfig, budget: int) -> SeedJob:
    """``job`` with the Trainer's ``max_epochs``/``max_steps`` set to the rung's ``budget``."""
    key = "max_epochs" if config.prune_unit == "epochs" else "max_steps"
    return replace(job, trainer_kwargs={**job.trainer_kwargs, key: budget})


def rung_tasks(record: Record, config: MultiSeedConfig, rung: int) -> list[SeedTask]:
    """The seeds that still have to reach ``rung`` (an index into the schedule), resumed where they can.

    A seed that completed the rung before, finished, failed or was pruned is skipped. A seed resumes from
    its ``last.ckpt`` when it has trained before and the file loads; otherwise it starts afresh (a folder
    already there is set aside as ``seed_<k>.orphan-<time>/``, never deleted). Each planned seed is
    entered in ``record.runs`` as ``"pending"`` with its earlier rungs kept.
    """
    root = config.root
    tasks: list[SeedTask] = []
    for seed in config.seed_list:
        old = record.runs.get(seed)
        if old is not None and (old.status in ("finished", "failed", "pruned") or rung_done(old) >= rung):
            continue
        folder, last = seed_dir(root, seed), last_checkpoint(root, seed)
        trained = old is not None and (old.status == "running" or rung_done(old) >= 0)
        resume = False
        if trained and last.is_file():
            problem = check_checkpoint(last, config.monitor, None)
            resume = problem is None
            if problem is not None:
                set_aside(folder, problem)
        if not resume and folder.exists():
            # Never deleted: a fresh start sets the old folder aside (seed_<k>.orphan-<time>/).
            set_aside(
                folder, "no usable last.ckpt to continue the schedule from" if old else "no record entry"
            )
        if old is not None and resume:
            prior = _prior_wall_time(old, last) if old.status == "running" else old.wall_time
        else:
            prior = 0.0
        kept = {k: old.extra[k] for k in (RUNG_DONE, RUNG_SCORES) if old is not None and k in old.extra}
        if not resume:
            kept = {}
        record.runs[seed] = SeedRun(
            seed=seed, status="pending", wall_time=prior, log_dir=str(folder), extra=kept
        )
        tasks.append(SeedTask(seed=seed, resume=resume, prior_wall_time=prior))
    return tasks


def after_rung(run: SeedRun, old: SeedRun | None, rung: int, last: bool) -> None:
    """Enters a seed's rung result: its score appended to ``extra["rung_scores"]``; between rungs a
    finished attempt waits as ``"pending"`` (the last rung leaves it ``"finished"``)."""
    scores = list(old.extra.get(RUNG_SCORES, [])) if old is not None else []
    if run.status == "finished" and run.score is not None:
        run.extra[RUNG_SCORES] = [*scores[:rung], float(run.score)]
        run.extra[RUNG_DONE] = rung
        if not last:
            run.status = "pending"
    elif scores:
        run.extra[RUNG_SCORES] = scores


def prune(record: Record, config: MultiSeedConfig, rung: int) -> list[int]:
    """Prunes the seeds of ``rung`` outside the best ``survivors_after(n, prune_keep)``; returns the pruned.

    The ranked seeds are those that completed ``rung`` and are not pruned (a rerun prunes nothing twice:
    the survivors are the same). A pruned seed keeps its rung score as ``score``.
    """
    alive = [
        record.runs[s]
        for s in config.seed_list
        if s in record.runs and record.runs[s].status == "pending" and rung_done(record.runs[s]) == rung
    ]
    if not alive:
        return []
    scores = [float(r.extra[RUNG_SCORES][rung]) for r in alive]
    entered = alive + [
        r for s in config.seed_list if (r := record.runs.get(s)) is not None and _pruned_at(r) == rung
    ]
    keep = survivors_after(len(entered), float(config.prune_keep))
    order = rank_by_validation(scores, config.mode)
    pruned = []
    for i in order[keep:]:
        run = alive[i]
        run.status, run.score = "pruned", scores[i]
        run.extra[PRUNED_RUNG] = rung
        pruned.append(run.seed)
    return sorted(pruned)


def _pruned_at(run: SeedRun) -> int | None:
    value = run.extra.get(PRUNED_RUNG)
    return value if run.status == "pruned" and isinstance(value, int) else None


def halving_block(record: Record, config: MultiSeedConfig) -> dict[str, Any]:
    """The ``halving`` block of ``summary.json``: the schedule, the seeds alive at each stage, the pruned
    seeds with their rung, and every seed's score at the first rung (the whole population's)."""
    schedule = config.prune_schedule or []
    runs = [record.runs[s] for s in config.seed_list if s in record.runs]
    population = first_rung_scores(runs)
    curve = best_of_k(population, config.mode, confidence=0.9) if population else None
    entered = [
        [r.seed for r in runs if rung_done(r) >= i or r.status == "finished"] for i in range(len(schedule))
    ]
    return {
        "schedule": schedule,
        "unit": config.prune_unit,
        "keep": float(config.prune_keep),
        "entered": [len(e) for e in entered],
        "pruned": {str(r.seed): r.extra[PRUNED_RUNG] for r in runs if _pruned_at(r) is not None},
        "first_rung_scores": {
            str(r.seed): r.extra[RUNG_SCORES][0] for r in runs if len(r.extra.get(RUNG_SCORES, [])) > 0
        },
        # Over the whole population at the first rung; the record's "best_of_k" is over the survivors.
        "first_rung_best_of_k": None if curve is None else curve.to_dict(),
    }


def run_halving(
    record: Record,
    config: MultiSeedConfig,
    job: SeedJob,
    execute: Callable[[SeedJob, list[SeedTask], int, bool], None],
    write: Callable[[], None],
) -> None:
    """Runs the schedule from where the record stands: per rung, the seeds still to reach it
    (``execute(rung_job, tasks, rung, last)``), then the pruning, written to the record (``write()``)."""
    schedule = config.prune_schedule
    assert schedule is not None
    for rung, budget in enumerate(schedule):
        last = rung == len(schedule) - 1
        tasks = rung_tasks(record, config, rung)
        write()
        if tasks:
            execute(rung_job(job, config, budget), tasks, rung, last)
        if not last:
            prune(record, config, rung)
            write()


def first_rung_scores(runs: Sequence[SeedRun]) -> list[float]:
    """Every seed's score at the first rung (the whole population), in the order given."""
    return [float(r.extra[RUNG_SCORES][0]) for r in runs if len(r.extra.get(RUNG_SCORES, [])) > 0]


__all__ = [
    "PRUNED_RUNG",
    "RUNG_DONE",
    "RUNG_SCORES",
    "after_rung",
    "first_rung_scores",
    "halving_block",
    "prune",
    "run_halving",
    "rung_done",
    "rung_job",
    "rung_tasks",
    "schedule_counts",
]
