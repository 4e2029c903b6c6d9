"""Successive halving replayed offline: constructed curves with known answers, a plain-Python replay over
every subset as ground truth for the Monte Carlo draws, the steps fraction in closed form."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from lightning_landscape.multiseed.halving_simulation import halving_simulation, survivors_after


def _reference(curves: np.ndarray, seeds: list[int], rungs: list[int], keep: float, mode: str):
    """One replay in plain Python: (full winner kept?, halving winner's final, full winner's final)."""
    sign = 1.0 if mode == "min" else -1.0
    alive = sorted(seeds)
    for r in rungs:
        n_keep = max(1, math.ceil(keep * len(alive) - 1e-9))
        alive = sorted(sorted(alive, key=lambda s: (sign * curves[s, r], s))[:n_keep])
    full = min(seeds, key=lambda s: (sign * curves[s, -1], s))
    halving = min(alive, key=lambda s: (sign * curves[s, -1], s))
    return full in alive, curves[halving, -1], curves[full, -1]


def test_rank_stable_curves_always_keep_the_winner():
    # Seed i's curve is i + 10 / (1 + t): every evaluation ranks the seeds alike.
    curves = np.arange(12.0)[:, None] + 10.0 / (1.0 + np.arange(6.0))[None, :]
    sim = halving_simulation(curves, rungs=[1, 3], keep=1 / 3, mode="min", num_seeds=9, draws=300)
    assert sim.kept_rate == 1.0 and sim.final_halving == sim.final_full
    assert sim.survivors == [9, 3, 1]


def test_curves_that_reverse_after_the_first_rung_lose_the_winner():
    # At rung 0 the ranking is reversed against the end: halving keeps the worst finishers.
    curves = np.stack([np.arange(10.0), np.arange(10.0)[::-1], np.arange(10.0)[::-1]], axis=1)
    sim = halving_simulation(curves, rungs=[0], keep=0.2, mode="max", num_seeds=8, draws=200)
    assert sim.kept_rate == 0.0
    assert sim.final_halving < sim.final_full


def test_steps_fraction_in_closed_form():
    curves = np.random.default_rng(0).normal(size=(27, 5))
    steps = [100, 250, 500, 750, 1000]
    sim = halving_simulation(curves, rungs=[0, 2], keep=1 / 3, mode="min", steps=steps, draws=5)
    # 27 start; 18 stop at step 100, 6 at step 500, 3 reach 1000.
    assert sim.steps_fraction == pytest.approx((18 * 100 + 6 * 500 + 3 * 1000) / (27 * 1000), rel=1e-12)
    # Evenly spaced evaluations by default: steps 1..5.
    even = halving_simulation(curves, rungs=[0, 2], keep=1 / 3, mode="min", draws=5)
    assert even.steps_fraction == pytest.approx((18 * 1 + 6 * 3 + 3 * 5) / (27 * 5), rel=1e-12)


def test_all_seeds_match_a_plain_python_replay():
    curves = np.random.default_rng(1).normal(size=(11, 7)).round(1)  # rounding makes ties
    for mode, keep, rungs in (("min", 0.5, [1, 3, 4]), ("max", 1 / 3, [2]), ("min", 1.0, [0, 5])):
        sim = halving_simulation(curves, rungs=rungs, keep=keep, mode=mode, draws=3)
        kept, halving, full = _reference(curves, list(range(11)), rungs, keep, mode)
        assert (sim.kept_rate, sim.final_halving, sim.final_full) == (float(kept), halving, full)


def test_drawn_subsets_match_the_average_over_every_subset():
    # Ground truth: the replay over all C(9, 5) = 126 subsets; the draws must agree within Monte Carlo error.
    rng = np.random.default_rng(2)
    curves = np.cumsum(rng.normal(size=(9, 6)), axis=1)  # random walks: rankings change along the way
    exact = [_reference(curves, list(s), [1, 3], 0.5, "min") for s in itertools.combinations(range(9), 5)]
    kept = np.mean([e[0] for e in exact])
    halving, full = np.mean([e[1] for e in exact]), np.mean([e[2] for e in exact])
    sim = halving_simulation(curves, rungs=[1, 3], keep=0.5, mode="min", num_seeds=5, draws=4000, seed=3)
    assert 0.05 < kept < 0.95  # a case where the rate is not trivially 0 or 1
    assert sim.kept_rate == pytest.approx(kept, abs=4 * math.sqrt(kept * (1 - kept) / 4000))
    spread = np.std([e[1] for e in exact])
    assert sim.final_halving == pytest.approx(halving, abs=4 * spread / math.sqrt(4000))
    assert sim.final_full == pytest.approx(full, abs=4 * np.std([e[2] for e in exact]) / math.sqrt(4000))
    assert json.loads(json.dumps(sim.to_dict()))["survivors"] == [5, 3, 2]


def test_survivors_after_rounds_up_and_keeps_one():
    assert [survivors_after(n, 1 / 3) for n in (1, 2, 3, 4, 9, 10)] == [1, 1, 1, 2, 3, 4]
    assert survivors_after(30, 0.1) == 3 and survivors_after(5, 1.0) == 5
    with pytest.raises(ValueError, match="`keep`"):
        survivors_after(5, 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"val_curves": [[1.0, 2.0]], "rungs": [1]}, ValueError, r"\[0, 0\]"),
        ({"val_curves": [1.0, 2.0], "rungs": [0]}, ValueError, "2-d"),
        ({"val_curves": [[1.0, math.nan, 1.0]], "rungs": [0]}, ValueError, "finite"),
        ({"val_curves": [["a", "b"]], "rungs": [0]}, TypeError, "val_curves"),
        ({"val_curves": [[1.0, 2.0, 3.0]], "rungs": [1, 0]}, ValueError, "increasing"),
        ({"val_curves": [[1.0, 2.0, 3.0]], "rungs": []}, ValueError, "`rungs`"),
        ({"val_curves": [[1.0, 2.0, 3.0]], "rungs": [0], "keep": 1.5}, ValueError, "`keep`"),
        ({"val_curves": [[1.0, 2.0, 3.0]], "rungs": [0], "mode": "best"}, ValueError, "`mode`"),
        ({"val_curves": [[1.0, 2.0, 3.0]], "rungs": [0], "num_seeds": 2}, ValueError, "`num_seeds`"),
        ({"val_curves": [[1.0, 2.0, 3.0]], "rungs": [0], "draws": 0}, ValueError, "`draws`"),
        ({"val_curves": [[1.0, 2.0, 3.0]], "rungs": [0], "steps": [3, 2, 1]}, ValueError, "`steps`"),
    ],
)
def test_bad_input_is_refused_by_name(kwargs, error, match):
    args = {"keep": 0.5, "mode": "min", **kwargs}
    with pytest.raises(error, match=match):
        halving_simulation(**args)
