"""Best-of-k against brute force over all k-subsets, the optimism numbers, still-improving, classification."""

from __future__ import annotations

import itertools
import json
import math
import random
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_landscape.multiseed import MultiSeedResult, MultiSeedTrainer, SeedRun
from lightning_landscape.multiseed.selection import (
    BestOfK,
    best_of_k,
    classify_point,
    rank_by_validation,
    selection_optimism,
    selection_weights,
    still_improving,
)
from tests.multiseed._tiny import TinyData, TinyRegressor, make_data, val_loss


def _brute_force(scores, tests, k, mode):
    """Every k-subset equally likely: the best validation score and the selected seed's test score."""
    best, selected_test = [], []
    sign = 1 if mode == "min" else -1
    for subset in itertools.combinations(range(len(scores)), k):
        # Ties go to the earlier seed, as select_best does.
        winner = min(subset, key=lambda i: (sign * scores[i], i))
        best.append(scores[winner])
        selected_test.append(tests[winner])
    return np.array(best), np.array(selected_test)


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("num_seeds", [1, 2, 5, 8])
def test_best_of_k_equals_the_average_over_all_k_subsets(num_seeds, mode):
    rng = random.Random(num_seeds * 10 + (mode == "max"))
    # Rounded to one decimal: ties happen, and the tie rule matters for the selected seed's test score.
    scores = [round(rng.uniform(0, 1), 1) for _ in range(num_seeds)]
    tests = [rng.uniform(0, 1) for _ in range(num_seeds)]
    curve = best_of_k(scores, mode=mode, test_scores=tests)
    assert curve.ks == list(range(1, num_seeds + 1))
    for k in curve.ks:
        best, sel_test = _brute_force(scores, tests, k, mode)
        i = k - 1
        assert curve.expected[i] == pytest.approx(best.mean(), rel=1e-12, abs=1e-15)
        assert curve.q_low[i] == np.quantile(best, 0.1, method="inverted_cdf")
        assert curve.q_high[i] == np.quantile(best, 0.9, method="inverted_cdf")
        assert curve.expected_test is not None and curve.test_low is not None and curve.test_high is not None
        assert curve.expected_test[i] == pytest.approx(sel_test.mean(), rel=1e-12, abs=1e-15)
        assert curve.test_low[i] == np.quantile(sel_test, 0.1, method="inverted_cdf")
        assert curve.test_high[i] == np.quantile(sel_test, 0.9, method="inverted_cdf")
    # k = 1 is the plain mean, k = K the best seed.
    assert curve.expected[0] == pytest.approx(sum(scores) / num_seeds, rel=1e-12)
    assert curve.expected[-1] == (min(scores) if mode == "min" else max(scores))


def test_best_of_k_is_monotone_and_its_range_brackets_the_mean_for_many_seeds():
    rng = np.random.default_rng(0)
    scores = list(rng.lognormal(size=300))
    curve = best_of_k(scores, quantiles=(0.25, 0.75))
    assert all(a >= b for a, b in itertools.pairwise(curve.expected))
    # A quantile range need not hold the mean of a skewed distribution, but it is ordered and in range.
    assert all(
        min(scores) <= lo <= hi <= max(scores) for lo, hi in zip(curve.q_low, curve.q_high, strict=True)
    )
    assert curve.q_low[-1] == curve.q_high[-1] == min(scores)
    assert curve.expected[-1] == min(scores)
    # Exact integer weights: they sum to one even for K = 300 and k = 150 (no cancellation).
    assert math.fsum(selection_weights(300, 150)) == pytest.approx(1.0, abs=1e-12)
    assert curve.table_ks() == [1, 2, 5, 10, 300]
    assert best_of_k([1.0, 2.0, 3.0]).table_ks() == [1, 2, 3]
    assert curve.expected_test is None


def test_best_of_k_round_trips_through_a_plain_dict():
    curve = best_of_k([0.3, 0.1, 0.2], test_scores=[0.5, 0.4, 0.45])
    data = curve.to_dict()
    import json

    again = BestOfK.from_dict(json.loads(json.dumps(data)))
    assert again == curve
    assert again.at(2)["expected"] == pytest.approx((0.1 + 0.2 + 0.1) / 3)


def test_rank_by_validation_keeps_seed_order_on_ties():
    assert rank_by_validation([0.2, 0.1, 0.2, 0.05]) == [3, 1, 0, 2]
    assert rank_by_validation([0.2, 0.1, 0.2, 0.05], mode="max") == [0, 2, 1, 3]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scores": []}, "empty"),
        ({"scores": [0.1, math.nan]}, "finite"),
        ({"scores": [0.1, 0.2], "test_scores": [0.1]}, "1 values for 2"),
        ({"scores": [0.1], "mode": "best"}, "mode"),
        ({"scores": [0.1], "quantiles": (0.9, 0.1)}, "ordered"),
        ({"scores": [0.1], "quantiles": (0.1, 1.5)}, r"\[0, 1\]"),
    ],
)
def test_best_of_k_refuses_bad_input_naming_it(kwargs, match):
    with pytest.raises(ValueError, match=match):
        best_of_k(**kwargs)


@pytest.mark.parametrize("k", [0, 4])
def test_selection_weights_refuse_k_outside_1_to_k(k):
    with pytest.raises(ValueError, match=r"`k` must be an int in \[1, 3\]"):
        selection_weights(3, k)


def test_optimism_numbers_by_hand_for_both_modes():
    o = selection_optimism(0.10, 0.14, [0.14, 0.20, 0.26], mode="min")
    assert o.mean_test_score == pytest.approx(0.20)
    assert o.optimism == pytest.approx(0.04)  # the winner's val loss is 0.04 lower than its test loss
    assert o.apparent_gain == pytest.approx(0.10)
    assert o.test_gain == pytest.approx(0.06)
    assert o.apparent_gain - o.test_gain == pytest.approx(o.optimism)
    # Accuracy: validation 0.95, test 0.90, mean test 0.85: flattered by 0.05 (positive again).
    m = selection_optimism(0.95, 0.90, [0.90, 0.80], mode="max")
    assert (m.optimism, m.apparent_gain, m.test_gain) == pytest.approx((0.05, 0.10, 0.05))
    with pytest.raises(ValueError, match="all_test"):
        selection_optimism(0.1, 0.2, [])


def test_still_improving_is_the_last_tenth_of_training():
    assert still_improving(1000, 1000) and still_improving(900, 1000) and not still_improving(899, 1000)
    assert still_improving(0, 0)  # one evaluation only: its best is at the end
    assert still_improving(80, 100, fraction=0.2) and not still_improving(79, 100, fraction=0.2)
    with pytest.raises(ValueError, match="best_at"):
        still_improving(11, 10)
    with pytest.raises(ValueError, match="fraction"):
        still_improving(1, 10, fraction=1.5)


@pytest.mark.parametrize(
    ("grad", "low", "high", "kind"),
    [
        (1e-6, 1e-4, 3.0, "minimum"),  # all curvature positive
        (1e-6, -2e-3, 3.0, "minimum"),  # a flat direction within eig_rtol * |eig_max| = 3e-3
        (1e-6, -4e-3, 3.0, "saddle"),  # just outside the tolerance
        (1e-3, -1.0, 3.0, "saddle"),  # gradient exactly at the tolerance counts as near-critical
        (1.1e-3, 1.0, 3.0, "not critical yet"),  # convex there, but still moving
        (0.5, -1.0, 3.0, "not critical yet"),
        (math.nan, 1.0, 3.0, "unknown"),
        (1e-6, math.nan, 3.0, "unknown"),
    ],
)
def test_classification_rule_on_constructed_cases(grad, low, high, kind):
    assert classify_point(grad, low, high, grad_tol=1e-3, eig_rtol=1e-3) == kind


def test_classification_refuses_a_negative_tolerance():
    with pytest.raises(ValueError, match="grad_tol"):
        classify_point(0.0, 0.0, 1.0, grad_tol=-1.0, eig_rtol=1e-3)


# --- wired into MultiSeedTrainer: the held-out test, optimism, still_improving, best-of-k on disk ------


class _WithTest(TinyRegressor):
    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", self.loss_on_batch(self.net, batch))


class _DataWithTest(TinyData):
    @override
    def test_dataloader(self) -> DataLoader:
        return DataLoader(make_data(48, 300), batch_size=16)


def _fit(tmp_path, executor: str, test: str) -> MultiSeedResult:
    trainer = MultiSeedTrainer(
        seeds=3, root_dir=tmp_path / executor, executor=executor, test=test, max_epochs=3,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    return trainer.fit(_WithTest, datamodule=_DataWithTest)


@pytest.mark.parametrize(("executor", "test"), [("sequential", "all"), ("vectorized", "best")])
def test_held_out_test_of_the_winner_is_recorded_and_reads_back(tmp_path, executor, test):
    result = _fit(tmp_path, executor, test)
    root = tmp_path / executor
    test_loader = _DataWithTest().test_dataloader()
    for run in result.finished:
        if test == "best" and run.seed != result.best_seed:
            assert run.test_score is None
            continue
        model = _WithTest.load_from_checkpoint(run.best_model_path, weights_only=True)
        assert run.test_score == pytest.approx(val_loss(model, test_loader), rel=1e-5)
        assert isinstance(run.still_improving, bool)
    best = next(r for r in result.runs if r.seed == result.best_seed)
    assert result.best_test_score == best.test_score is not None
    tested = [r.test_score for r in result.finished if r.test_score is not None]
    expected = selection_optimism(result.best_score, best.test_score, tested, "min")
    assert result.selection is not None
    assert result.selection["optimism"] == pytest.approx(expected.optimism, rel=1e-12)
    assert result.selection["test_gain"] == pytest.approx(expected.test_gain, rel=1e-12)

    summary = json.loads((root / "summary.json").read_text())
    assert [r.get("test_score") for r in summary["runs"]] == [r.test_score for r in result.runs]
    assert summary["selection"]["optimism"] == pytest.approx(expected.optimism, rel=1e-12)
    stored = BestOfK.from_dict(summary["best_of_k"])
    assert stored.expected == pytest.approx(best_of_k(result.scores).expected, rel=1e-12)
    assert (stored.expected_test is not None) == (test == "all")
    assert (root / "best_of_k.png").stat().st_size > 0
    assert "test_score" in (root / "summary.csv").read_text().splitlines()[0]

    # A rerun trains nothing, keeps the test scores and reads the same curve back.
    again = _fit(tmp_path, executor, test)
    assert [r.test_score for r in again.runs] == [r.test_score for r in result.runs]
    assert again.best_of_k() == result.best_of_k()


def test_selecting_on_the_test_set_is_refused_unless_asked_for(tmp_path):
    with pytest.raises(ValueError, match=r"monitor='test_loss'.*select_on_test=True"):
        MultiSeedTrainer(seeds=2, monitor="test_loss", root_dir=tmp_path)
    MultiSeedTrainer(seeds=2, monitor="test_loss", root_dir=tmp_path, select_on_test=True)
    assert (
        MultiSeedTrainer(seeds=2, monitor="val/acc", mode="max", root_dir=tmp_path).config.test_metric
        == "test/acc"
    )
    with pytest.raises(ValueError, match="`test` must be one of"):
        MultiSeedTrainer(seeds=2, root_dir=tmp_path, test="winner")  # type: ignore[arg-type]


def test_still_improving_reads_the_steps_of_the_checkpoints(tmp_path):
    # Validation loss that falls every epoch: the best checkpoint is the last one.
    result = _fit(tmp_path, "sequential", "none")
    assert all(r.test_score is None for r in result.runs)
    for run in result.finished:
        best = torch.load(run.best_model_path, weights_only=True)["global_step"]
        last = torch.load(run.last_model_path, weights_only=True)["global_step"]
        assert run.still_improving == still_improving(best, last)
    summary = json.loads((tmp_path / "sequential" / "summary.json").read_text())
    assert summary["still_improving"] == sorted(r.seed for r in result.finished if r.still_improving)


def test_cli_table_prints_best_of_k_rows_test_scores_and_still_improving():
    from lightning_landscape.cli import format_result

    runs = [
        SeedRun(seed=s, status="finished", score=0.1 * (s + 1), test_score=0.1 * (s + 1) + 0.05)
        for s in range(12)
    ]
    runs[3].still_improving = True
    result = MultiSeedResult(runs, "val_loss", "min", 0, 0.1, "/r/best.ckpt", "/r", best_test_score=0.15)
    result.selection = {
        **selection_optimism(0.1, 0.15, [r.test_score for r in runs]).to_dict(),
        "seeds_tested": 12,
    }
    text = format_result(result)
    curve = result.best_of_k()
    assert curve is not None
    for k in (1, 2, 5, 10, 12):
        assert f"k={k:<4} {curve.expected[k - 1]:.6g}" in text
    assert "k=3 " not in text
    assert any(line.split()[0] == "3" and line.endswith("(still improving)") for line in text.splitlines())
    assert "test score" in text.splitlines()[0] and "optimism +0.05" in text


def test_a_model_without_test_step_or_metric_is_left_untested_with_a_warning(tmp_path):
    trainer = MultiSeedTrainer(
        seeds=2, root_dir=tmp_path, test_monitor="test_acc", max_epochs=1, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    with pytest.warns(UserWarning, match=r"test_monitor='test_acc'.*logs \['test_loss'\]"):
        result = trainer.fit(_WithTest, datamodule=_DataWithTest)
    assert result.best_test_score is None and result.selection is None
    assert result.best_of_k() is not None


def _banner_count(caplog, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("quiet", [False, True])
def test_banners_once_per_run_one_bar_over_the_seeds_and_a_quiet_option(tmp_path, caplog, capsys, quiet):
    import logging

    caplog.set_level(logging.INFO)
    trainer = MultiSeedTrainer(
        seeds=3, root_dir=tmp_path, max_epochs=1, enable_progress_bar=False, test="none", quiet=quiet,
        accelerator="cpu",
    )  # fmt: skip
    trainer.fit(TinyRegressor, datamodule=TinyData)
    err = capsys.readouterr().err
    # Four Trainers ran (the pre-flight and three seeds): without the filter, four of each banner.
    assert _banner_count(caplog, "GPU available") == (0 if quiet else 1)
    assert _banner_count(caplog, "Trainable params") == (0 if quiet else 1)  # the model summary
    assert _banner_count(caplog, "[MultiSeedTrainer") == (0 if quiet else 3)
    assert ("Seeds" in err and "3/3" in err) is not quiet
    # The filter is gone after the run: a plain Trainer prints its banner again.
    caplog.clear()
    from lightning.pytorch import Trainer

    Trainer(logger=False, enable_checkpointing=False, default_root_dir=tmp_path, accelerator="cpu")
    assert _banner_count(caplog, "GPU available") == 1
