"""The configuration of a multi-seed run: every ``MultiSeedTrainer`` argument, typed, defaulted, checked once.

:class:`MultiSeedConfig` is the one definition. :class:`~lightning_landscape.multiseed.MultiSeedTrainer`
takes its fields as its own arguments (its signature is built from them, see :func:`config_parameters`), and
the ``lightning-landscape multiseed`` command adds them as its options (``add_class_arguments``), so the
three cannot drift apart. A value is checked once, where it enters: in :meth:`MultiSeedConfig.__post_init__`.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lightning_landscape.multiseed._config_checks import (
    PRUNE_UNITS,
    check_pruning,
    check_resources,
    check_trainer_kwargs,
)
from lightning_landscape.multiseed.barriers import DEFAULT_TOL as BARRIER_TOL
from lightning_landscape.multiseed.result import is_seed
from lightning_landscape.multiseed.selection import STILL_IMPROVING_FRACTION

ExecutorName = Literal["sequential", "ray", "vectorized"]
EXECUTORS = ("sequential", "ray", "vectorized")
Mode = Literal["min", "max"]
MODES = ("min", "max")
TestWhich = Literal["best", "all", "none"]
PruneUnit = Literal["epochs", "steps"]
TEST_CHOICES = ("best", "all", "none")
# Trainer arguments the multi-seed trainer sets itself, with what to use instead.
_VAL = re.compile(r"(^|[_/.])val(idation)?(?=$|[_/.])")
_TEST = re.compile(r"(^|[_/.])test(?=$|[_/.])")


def derive_test_monitor(monitor: str) -> str:
    """The test metric that matches a validation ``monitor``: ``val_loss`` -> ``test_loss``,
    ``val/acc`` -> ``test/acc``; a name without a ``val`` part is used as it is.

    Example:
        >>> derive_test_monitor("val_loss"), derive_test_monitor("val/acc"), derive_test_monitor("loss")
        ('test_loss', 'test/acc', 'loss')
    """
    return _VAL.sub(lambda m: f"{m.group(1)}test", monitor, count=1)


def names_test_set(monitor: str) -> bool:
    """Whether ``monitor`` names a test-set metric (``test_loss``, ``test/acc``, ...).

    Example:
        >>> names_test_set("test/acc"), names_test_set("val_loss"), names_test_set("latest")
        (True, False, False)
    """
    return bool(_TEST.search(monitor))


def check_seeds(seeds: Any) -> list[int]:
    """The seed list of a run: ``0 .. seeds-1`` for a count, else the given distinct integers in order.

    Raises:
        TypeError: not a count or a list of integers.
        ValueError: an empty list, a count below 1, a seed outside ``[0, 2**32 - 1]`` or a duplicate.

    Example:
        >>> check_seeds(3), check_seeds([7, 2])
        ([0, 1, 2], [7, 2])
        >>> check_seeds([1, 1])
        Traceback (most recent call last):
        ...
        ValueError: `seeds` must be distinct, got duplicates [1] in [1, 1]
    """
    if isinstance(seeds, bool):
        raise TypeError(f"`seeds` must be a count or a list of integers, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"`seeds` must be at least 1 (a count) or a non-empty list, got {seeds}")
        return list(range(seeds))
    if not isinstance(seeds, Sequence) or isinstance(seeds, str):
        raise TypeError(f"`seeds` must be a count or a list of integers, got {seeds!r}")
    if len(seeds) == 0:
        raise ValueError("`seeds` must be at least 1 (a count) or a non-empty list, got []")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int)]
    if bad:
        raise TypeError(f"`seeds` must hold integers only, got {bad!r} in {list(seeds)!r}")
    out_of_range = [s for s in seeds if not is_seed(s)]
    if out_of_range:
        raise ValueError(f"`seeds` must lie in [0, 2**32 - 1] (numpy's range), got {out_of_range!r}")
    duplicates = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if duplicates:
        raise ValueError(f"`seeds` must be distinct, got duplicates {duplicates} in {list(seeds)!r}")
    return [int(s) for s in seeds]


@dataclass(frozen=True)
class MultiSeedConfig:
    """Everything a multi-seed run is configured with, checked when built.

    Args:
        seeds: how many seeds (``0 .. seeds-1``) or an explicit list of distinct integers.
        monitor: the logged metric that ranks the seeds.
        mode: ``"min"`` or ``"max"``: whether a lower or a higher ``monitor`` is better.
        root_dir: the folder of the run; reuse it to resume.
        executor: ``"sequential"`` (in this process), ``"ray"`` (one Ray task per seed; needs the
            ``ray`` extra) or ``"vectorized"`` (all seeds as one vectorized ensemble; the model must
            qualify).
        model_kwargs: keyword arguments for a model class or factory.
        ray_address: address of a Ray cluster; ``None`` starts a local one (unless Ray is already
            initialized in this process, which is then used as it is).
        cpus_per_seed: CPUs Ray reserves per seed.
        gpus_per_seed: GPUs Ray reserves per seed; a fraction lets several seeds share one GPU.
        max_concurrent: most seeds Ray runs at once; ``None`` leaves it to the cluster's resources.
        max_retries: how often Ray re-runs a seed whose worker process died (-1: forever).
        allow_config_change: rank seeds trained with another configuration together with the new ones
            (the record then holds the new configuration); a rerun with another configuration is refused
            otherwise.
        test: after the selection, run ``Trainer.test`` on the best checkpoint of the winner
            (``"best"``), of every finished seed (``"all"``: also gives best-of-k's expected test score)
            or of none; only when there is a test split (``test_dataloaders=`` or the datamodule's).
        test_monitor: the test metric recorded as ``test_score``; default: ``monitor`` with ``val``
            replaced by ``test`` (``val_loss`` -> ``test_loss``).
        select_on_test: allow a ``monitor`` that names a test metric. Selecting on the test set makes
            the winner's test score optimistic, so it is refused unless asked for.
        still_improving_fraction: a seed whose best checkpoint lies in this final share of training
            is flagged ``still_improving``.
        quiet: no progress bar over the seeds and no Lightning notices below a warning (for scripts).
            Either way each of Lightning's banners and notices (and the model summary) appears once
            per run, not once per seed.
        barriers: after the selection, the loss barrier between the best seed's best checkpoint and each
            other finished seed's (``True`` or ``"best"``), or between every pair (``"all"``), on the
            first 4 train batches: the ``barriers`` block of ``summary.json``, ``barriers.png`` (heatmap),
            ``interpolation.png`` (the segments) and one summary line (seeds sharing the best basin).
        barrier_tol: the barrier (loss units) below which a seed shares the best seed's basin.
        datamodule_kwargs: keyword arguments for a datamodule class or factory (recorded in the
            fingerprint, as ``model_kwargs`` are; the CLI passes the ``data`` section's ``init_args``).
        align: with ``barriers``, also the barriers after aligning each other seed to the compared one
            up to permutation (and ReLU rescaling) symmetry: ``"weights"`` (weight matching, no data;
            default), ``"activations"`` (activation matching on the barrier batches) or ``None`` (raw
            only). A module that cannot be aligned keeps the raw barriers, and the record says why.
        soup: after the selection, average the finished seeds' weights: ``"uniform"`` (all, aligned to
            the best seed first where the module allows), ``"greedy"`` (in order of validation score, a
            seed kept while the soup's validation score improves) or ``"none"``; written as
            ``soup.ckpt`` and scored on validation and test beside the best seed.
        ensemble: average the predictions of the top-``ensemble`` seeds (no new training; probabilities
            for classifiers, outputs for regression) and score it on validation and test (0: off).
        prune_rungs: successive halving of seeds: the budgets (in ``prune_unit``, strictly increasing,
            below the Trainer's ``max_epochs``/``max_steps``) at which seeds are pruned. Every seed trains
            to the first rung; the best ``ceil(prune_keep * n)`` (at least one) by their best ``monitor``
            so far resume from their ``last.ckpt`` to the next rung, and so on; the survivors of the last
            rung train to the end. Pruned seeds are recorded as ``"pruned"`` with their rung and score
            (``extra["pruned_rung"]``, ``extra["rung_scores"]``); their folders are kept. ``None``: every
            seed trains to the end. The schedule is part of the configuration fingerprint.
        prune_keep: the fraction of seeds each rung keeps, in ``(0, 1]``.
        prune_unit: ``"epochs"`` (rungs compare with ``max_epochs``) or ``"steps"`` (with ``max_steps``;
            a seed is ranked by its last checkpoint, so let validation run at each rung's step).
        trainer_kwargs: arguments of every seed's ``Trainer`` (``max_epochs``, ``callbacks``,
            ``accelerator``, ...). ``logger`` may be ``True``/``None`` (a TensorBoardLogger per seed) or
            ``False``; checkpointing cannot be switched off.

    Raises:
        ValueError: a bad ``seeds``, ``monitor``, ``mode``, ``executor``, resource or Trainer argument.
        TypeError: an argument of the wrong type, or an unknown Trainer argument.
        ImportError: ``executor="ray"`` without Ray installed.

    Example:
        >>> config = MultiSeedConfig(seeds=3, barriers=True, trainer_kwargs={"max_epochs": 2})
        >>> config.seed_list, config.barriers_which, config.test_metric, str(config.root)
        ([0, 1, 2], 'best', 'test_loss', 'multiseed')
        >>> MultiSeedConfig(mode="best")
        Traceback (most recent call last):
        ...
        ValueError: `mode` must be one of ('min', 'max'), got 'best'
    """

    seeds: int | list[int] = 5
    monitor: str = "val_loss"
    mode: Mode = "min"
    root_dir: str | Path = "multiseed"
    executor: ExecutorName = "sequential"
    model_kwargs: dict[str, Any] | None = None
    ray_address: str | None = None
    cpus_per_seed: float = 1.0
    gpus_per_seed: float = 0.0
    max_concurrent: int | None = None
    max_retries: int = 3
    allow_config_change: bool = False
    test: TestWhich = "best"
    test_monitor: str | None = None
    select_on_test: bool = False
    still_improving_fraction: float = STILL_IMPROVING_FRACTION
    quiet: bool = False
    barriers: bool | Literal["best", "all"] = False
    barrier_tol: float = BARRIER_TOL
    datamodule_kwargs: dict[str, Any] | None = None
    align: Literal["weights", "activations"] | None = "weights"
    soup: Literal["none", "uniform", "greedy"] = "none"
    ensemble: int = 0
    prune_rungs: list[int] | None = None
    prune_keep: float = 1 / 3
    prune_unit: PruneUnit = "epochs"
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_seeds(self.seeds)
        monitor, test_monitor = self.monitor, self.test_monitor
        if self.test not in TEST_CHOICES:
            raise ValueError(f"`test` must be one of {TEST_CHOICES}, got {self.test!r}")
        if test_monitor is not None and (not isinstance(test_monitor, str) or not test_monitor):
            raise ValueError(f"`test_monitor` must be None or a logged metric's name, got {test_monitor!r}")
        if isinstance(monitor, str) and names_test_set(monitor) and self.select_on_test is not True:
            raise ValueError(
                f"`monitor={monitor!r}` selects the seed on the test set, which makes the test score of the"
                " winner optimistic; monitor a validation metric, or pass select_on_test=True if you mean it"
            )
        fraction = self.still_improving_fraction
        if isinstance(fraction, bool) or not (isinstance(fraction, (int, float)) and 0 <= fraction <= 1):
            raise ValueError(f"`still_improving_fraction` must be a number in [0, 1], got {fraction!r}")
        if not isinstance(self.quiet, bool):
            raise TypeError(f"`quiet` must be True or False, got {self.quiet!r}")
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"`monitor` must be the non-empty name of a logged metric, got {monitor!r}")
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {self.mode!r}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"`executor` must be one of {EXECUTORS}, got {self.executor!r}")
        if not isinstance(self.root_dir, (str, os.PathLike)) or not str(self.root_dir):
            raise TypeError(f"`root_dir` must be a path, got {self.root_dir!r}")
        if self.model_kwargs is not None and not isinstance(self.model_kwargs, dict):
            raise TypeError(f"`model_kwargs` must be a dict or None, got {type(self.model_kwargs).__name__}")
        if self.datamodule_kwargs is not None and not isinstance(self.datamodule_kwargs, dict):
            raise TypeError(
                f"`datamodule_kwargs` must be a dict or None, got {type(self.datamodule_kwargs).__name__}"
            )
        if not isinstance(self.allow_config_change, bool):
            raise TypeError(f"`allow_config_change` must be True or False, got {self.allow_config_change!r}")
        if self.ray_address is not None and not isinstance(self.ray_address, str):
            raise TypeError(f"`ray_address` must be a string or None, got {self.ray_address!r}")
        check_resources(self.cpus_per_seed, self.gpus_per_seed, self.max_concurrent, self.max_retries)
        check_trainer_kwargs(self.trainer_kwargs)
        if self.executor == "ray":
            try:
                import ray  # noqa: F401
            except ImportError as err:
                raise ImportError(
                    "executor='ray' needs Ray: `pip install 'lightning-landscape[ray]'`"
                ) from err
        if self.barriers not in (False, True, "best", "all"):
            raise ValueError(f"`barriers` must be False, True, 'best' or 'all', got {self.barriers!r}")
        tol = self.barrier_tol
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
            raise ValueError(f"`barrier_tol` must be a number >= 0, got {tol!r}")
        if self.align not in (None, "weights", "activations"):
            raise ValueError(f"`align` must be None, 'weights' or 'activations', got {self.align!r}")
        if self.soup not in ("none", "uniform", "greedy"):
            raise ValueError(f"`soup` must be one of ('none', 'uniform', 'greedy'), got {self.soup!r}")
        if isinstance(self.ensemble, bool) or not isinstance(self.ensemble, int) or self.ensemble < 0:
            raise ValueError(f"`ensemble` must be an integer >= 0 (0: no ensemble), got {self.ensemble!r}")
        check_pruning(self.prune_rungs, self.prune_keep, self.prune_unit, self.executor, self.trainer_kwargs)

    @property
    def seed_list(self) -> list[int]:
        """The seeds of the run, in order (``seeds`` was checked when the configuration was built)."""
        return list(range(self.seeds)) if isinstance(self.seeds, int) else [int(s) for s in self.seeds]

    @property
    def root(self) -> Path:
        """``root_dir`` as a ``Path``."""
        return Path(self.root_dir)

    @property
    def test_metric(self) -> str:
        """The metric recorded as ``test_score``: ``test_monitor``, else derived from ``monitor``."""
        return self.test_monitor or derive_test_monitor(self.monitor)

    @property
    def prune_schedule(self) -> list[int] | None:
        """The budgets of successive halving, the end included (``prune_rungs + [max_epochs/max_steps]``),
        in ``prune_unit``; ``None`` without pruning."""
        if self.prune_rungs is None:
            return None
        key = "max_epochs" if self.prune_unit == "epochs" else "max_steps"
        return [int(r) for r in self.prune_rungs] + [int(self.trainer_kwargs[key])]

    @property
    def barriers_which(self) -> Literal["best", "all"] | None:
        """Which barriers to compute after the selection: ``"best"``, ``"all"`` or ``None`` (none)."""
        return "best" if self.barriers is True else (self.barriers or None)


def config_parameters() -> list[inspect.Parameter]:
    """The ``MultiSeedTrainer`` signature: one parameter per :class:`MultiSeedConfig` field, in order,
    with its type and default, and ``**trainer_kwargs`` last.

    Example:
        >>> [p.name for p in config_parameters()][:3], str(config_parameters()[-1])
        (['seeds', 'monitor', 'mode'], '**trainer_kwargs: Any')
    """
    hints = typing.get_type_hints(MultiSeedConfig)
    params = [
        inspect.Parameter(
            f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default, annotation=hints[f.name]
        )
        for f in dataclasses.fields(MultiSeedConfig)
        if f.name != "trainer_kwargs"
    ]
    return [*params, inspect.Parameter("trainer_kwargs", inspect.Parameter.VAR_KEYWORD, annotation=Any)]


__all__ = [
    "EXECUTORS",
    "TEST_CHOICES",
    "ExecutorName",
    "PRUNE_UNITS",
    "PruneUnit",
    "MultiSeedConfig",
    "TestWhich",
    "check_seeds",
    "check_trainer_kwargs",
    "config_parameters",
    "derive_test_monitor",
    "names_test_set",
]
