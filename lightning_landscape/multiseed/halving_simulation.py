r"""What successive halving of seeds buys, measured offline from seeds that all trained to the end.

Successive halving (Jamieson & Talwalkar 2016; for seeds, Dodge et al. 2020) starts n seeds, and at
each rung keeps the best :math:`\lceil \text{keep} \cdot n_i \rceil` (at least one) by the monitored
score at that rung; only the survivors of the last rung train to the end. Given the validation curves of
M seeds that *did* train to the end, :func:`halving_simulation` replays it: draw n of the M seeds
(without replacement, ``draws`` times), apply the rungs to their recorded scores, and compare with
training all n to the end:

* **kept rate**: how often the survivors of the last rung contain the full run's winner (the best
  final score among the n drawn; ties go to the lower seed index, as in the selection);
* **final scores**: the mean over draws of the final score of halving's winner (the best final score
  among the survivors) and of the full run's winner;
* **steps fraction**: the training steps halving spends over those of training all n to the end,
  :math:`\big(\sum_i (n_i - n_{i+1})\, t_{r_i} + n_{\mathrm{last}}\, t_{\mathrm{end}}\big)
  / (n\, t_{\mathrm{end}})`, with :math:`t` the step of each evaluation. It depends only on n, the
  rungs and ``keep``.

Example:
    >>> import numpy as np
    >>> curves = np.array([[3.0, 2.0, 1.0], [2.0, 1.5, 1.2], [1.0, 1.0, 1.1], [4.0, 3.0, 2.0]])
    >>> sim = halving_simulation(curves, rungs=[0], keep=0.5, mode="min")
    >>> sim.kept_rate, sim.survivors, sim.final_halving, sim.final_full
    (0.0, [4, 2], 1.1, 1.0)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lightning_landscape.multiseed._checks import check_mode
from lightning_landscape.multiseed.selection import Mode

#: ``keep * n`` is rounded up after this slack, so that ``0.1 * 30`` keeps 3 seeds, not 4.
_CEIL_SLACK = 1e-9


def survivors_after(num_seeds: int, keep: float) -> int:
    """How many of ``num_seeds`` seeds a rung keeps: ``ceil(keep * num_seeds)``, at least 1.

    Raises:
        ValueError: for ``num_seeds < 1`` or a ``keep`` outside ``(0, 1]``.

    Example:
        >>> survivors_after(9, 1 / 3), survivors_after(2, 1 / 3), survivors_after(30, 0.1)
        (3, 1, 3)
    """
    if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
        raise ValueError(f"`num_seeds` must be an int >= 1, got {num_seeds!r}")
    _check_keep(keep)
    return max(1, math.ceil(keep * num_seeds - _CEIL_SLACK))


def _check_keep(keep: Any) -> None:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ValueError(f"`keep` must be a fraction in (0, 1], e.g. 1/3, got {keep!r}")


@dataclass(frozen=True)
class HalvingSimulation:
    """Successive halving replayed on fully trained seeds (see the module docstring).

    Attributes:
        mode: ``"min"`` or ``"max"``.
        num_seeds: n, the seeds each replay starts.
        draws: how many sets of n seeds were drawn.
        rungs: the evaluation indices of the rungs.
        keep: the fraction kept at each rung.
        survivors: seeds alive at the start and after each rung (``len(rungs) + 1`` counts).
        kept_rate: fraction of draws whose survivors contain the full run's winner.
        final_halving: mean final score of halving's winner.
        final_full: mean final score of the full run's winner.
        steps_fraction: steps halving spends over those of training all n to the end.
    """

    mode: Mode
    num_seeds: int
    draws: int
    rungs: list[int]
    keep: float
    survivors: list[int]
    kept_rate: float
    final_halving: float
    final_full: float
    steps_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_curves(val_curves: Any) -> np.ndarray:
    try:
        curves = np.asarray(val_curves, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`val_curves` must be a (seeds x evaluations) array of numbers: {err}") from None
    if curves.ndim != 2 or curves.shape[0] < 1 or curves.shape[1] < 2:
        raise ValueError(
            "`val_curves` must be a 2-d array of seeds x evaluations with at least one seed and two"
            f" evaluations, got shape {curves.shape}"
        )
    if not np.all(np.isfinite(curves)):
        raise ValueError("`val_curves` must hold finite numbers only (a diverged seed: give it a bad score)")
    return curves


def _check_rungs(rungs: Any, num_evals: int) -> list[int]:
    if isinstance(rungs, (str, bytes)) or not isinstance(rungs, Sequence) or not rungs:
        raise ValueError(f"`rungs` must be a non-empty sequence of evaluation indices, got {rungs!r}")
    out = []
    for r in rungs:
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 0 <= r < num_evals - 1:
            raise ValueError(
                f"`rungs` must hold evaluation indices in [0, {num_evals - 2}] (a rung comes before the"
                f" final evaluation {num_evals - 1}), got {list(rungs)!r}"
            )
        out.append(int(r))
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"`rungs` must be strictly increasing, got {out!r}")
    return out


def _check_steps(steps: Any, num_evals: int) -> np.ndarray:
    if steps is None:
        return np.arange(1, num_evals + 1, dtype=np.float64)
    arr = np.asarray(steps, dtype=np.float64)
    if arr.shape != (num_evals,) or not np.all(np.isfinite(arr)) or arr[0] <= 0 or np.any(np.diff(arr) <= 0):
        raise ValueError(
            f"`steps` must give one increasing positive step per evaluation ({num_evals}), got {steps!r}"
        )
    return arr


def halving_simulation(
    val_curves: Any,
    rungs: Sequence[int],
    keep: float,
    mode: Mode,
    *,
    num_seeds: int | None = None,
    steps: Sequence[float] | None = None,
    draws: int = 1000,
    seed: int = 0,
) -> HalvingSimulation:
    """Replay successive halving on the validation curves of fully trained seeds.

    Args:
        val_curves: array-like of shape (M seeds, E evaluations): every seed's validation score at each
            evaluation, the last one at the end of training.
        rungs: strictly increasing evaluation indices in ``[0, E - 2]`` at which halving prunes.
        keep: the fraction of seeds each rung keeps, in ``(0, 1]`` (:func:`survivors_after`).
        mode: ``"min"`` (lower is better) or ``"max"``.
        num_seeds: n, how many of the M seeds each replay starts; ``None`` for all M (then every draw is
            the same set).
        steps: the training step (or epoch) of each evaluation, increasing; ``None`` for ``1..E``
            (evenly spaced evaluations).
        draws: how many sets of n seeds to draw.
        seed: seed of the draws.

    Returns:
        A :class:`HalvingSimulation` of plain numbers.

    Raises:
        ValueError: for a malformed ``val_curves``/``rungs``/``steps``, a ``keep`` outside ``(0, 1]``,
            an unknown ``mode``, ``num_seeds`` outside ``[1, M]`` or ``draws < 1``.
        TypeError: for a ``val_curves`` that is not numeric.

    Example:
        >>> sim = halving_simulation([[1.0, 0.9], [2.0, 0.5], [3.0, 0.1]], rungs=[0], keep=0.3, mode="min")
        >>> sim.kept_rate, round(sim.steps_fraction, 4)  # the last-place seed at rung 0 ends best
        (0.0, 0.6667)
    """
    check_mode(mode)
    curves = _check_curves(val_curves)
    total, num_evals = curves.shape
    rung_list = _check_rungs(rungs, num_evals)
    _check_keep(keep)
    at = _check_steps(steps, num_evals)
    n = total if num_seeds is None else num_seeds
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= total:
        raise ValueError(f"`num_seeds` must be None or an int in [1, {total}], got {num_seeds!r}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"`draws` must be an int >= 1, got {draws!r}")

    lower_better = curves if mode == "min" else -curves
    rng = np.random.default_rng(seed)
    # Each row a random n-subset in ascending seed order: a stable sort then breaks ties by seed index.
    drawn = np.sort(np.argsort(rng.random((draws, total)), axis=1)[:, :n], axis=1)
    alive = drawn
    counts = [n]
    spent = 0.0
    for r in rung_list:
        next_n = survivors_after(counts[-1], keep)
        spent += (counts[-1] - next_n) * at[r]
        order = np.argsort(lower_better[alive, r], axis=1, kind="stable")[:, :next_n]
        alive = np.sort(np.take_along_axis(alive, order, axis=1), axis=1)
        counts.append(next_n)
    spent += counts[-1] * at[-1]

    full_winner = np.take_along_axis(drawn, np.argmin(lower_better[drawn, -1], axis=1)[:, None], axis=1)
    halving_winner = np.take_along_axis(alive, np.argmin(lower_better[alive, -1], axis=1)[:, None], axis=1)
    kept = np.any(alive == full_winner, axis=1)
    return HalvingSimulation(
        mode=mode,
        num_seeds=n,
        draws=draws,
        rungs=rung_list,
        keep=float(keep),
        survivors=counts,
        kept_rate=float(kept.mean()),
        final_halving=math.fsum(curves[halving_winner[:, 0], -1].tolist()) / draws,
        final_full=math.fsum(curves[full_winner[:, 0], -1].tolist()) / draws,
        steps_fraction=float(spent / (n * at[-1])),
    )
