"""GradientNormMonitor on a real Trainer: logged norms vs norms computed independently from the gradients."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_landscape.callbacks import tags as _tags
from lightning_landscape.callbacks.grad_norm import GradientNormMonitor
from tests.callbacks._cb_helpers import TinyRegression, make_loader
from tests.callbacks._events import read_event_tags, read_layout_categories, read_scalars


class GradRecorder(pl.Callback):
    """Copies of every gradient seen by the optimizer, keyed by the step Lightning logs the batch at."""

    def __init__(self) -> None:
        self.grads: dict[int, dict[str, torch.Tensor]] = {}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        step = trainer.global_step  # one optimizer, no accumulation: equals the logging step here
        self.grads[step] = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters()}


def _expected(grads: dict[str, torch.Tensor], p: float, granularity: str) -> dict[str, float]:
    def norm(ts: list[torch.Tensor]) -> float:
        flat = torch.cat([t.reshape(-1) for t in ts]).to(torch.float64)
        return float(torch.linalg.vector_norm(flat, ord=p))

    out = {_tags.GRAD_NORM_TOTAL: norm(list(grads.values()))}
    groups: dict[str, list[torch.Tensor]] = {}
    for name, g in grads.items():
        groups.setdefault(name if granularity == "parameter" else name.rpartition(".")[0], []).append(g)
    out.update({_tags.grad_norm_tag(name): norm(ts) for name, ts in groups.items()})
    return out


@pytest.mark.parametrize(
    ("norm_type", "granularity"),
    [(2.0, "module"), (1.0, "parameter"), (math.inf, "module"), (3.0, "parameter")],
)
def test_logged_norms_match_independent_norms(
    tmp_path: Path, trainer_kwargs: dict[str, Any], norm_type: float, granularity: Any
) -> None:
    monitor = GradientNormMonitor(norm_type=norm_type, granularity=granularity, log_every_n_steps=3)
    recorder = GradRecorder()
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(max_steps=10, callbacks=[monitor, recorder], logger=logger, **trainer_kwargs)
    trainer.fit(TinyRegression(), make_loader())
    scalars = read_scalars(logger.log_dir)
    assert sorted(scalars[_tags.GRAD_NORM_TOTAL]) == [2, 5, 8]
    for step in (2, 5, 8):
        expected = _expected(recorder.grads[step], norm_type, granularity)
        logged = {tag: series[step] for tag, series in scalars.items() if tag.startswith("grad_norm/")}
        assert logged.keys() == expected.keys()
        for tag, value in expected.items():
            # TensorBoard stores float32 scalars.
            assert logged[tag] == pytest.approx(value, rel=1e-6), tag
    assert float(trainer.callback_metrics[_tags.GRAD_NORM_TOTAL]) == pytest.approx(
        scalars["grad_norm/total"][8]
    )


def test_default_schedule_follows_trainer_and_layout(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    logger = TensorBoardLogger(tmp_path, name="tb")
    kwargs = {**trainer_kwargs, "log_every_n_steps": 4}
    monitor = GradientNormMonitor(histogram=True, per_layer=False)
    trainer = pl.Trainer(max_steps=13, callbacks=[monitor], logger=logger, **kwargs)
    trainer.fit(TinyRegression(), make_loader())
    scalars = read_scalars(logger.log_dir)
    # Same steps as the module's own step metrics, and no per-layer tags.
    assert sorted(scalars[_tags.GRAD_NORM_TOTAL]) == sorted(scalars["train_loss_step"]) == [3, 7, 11]
    assert [t for t in scalars if t.startswith("grad_norm/")] == [_tags.GRAD_NORM_TOTAL]
    assert _tags.GRAD_NORM_HISTOGRAM in read_event_tags(logger.log_dir)["histograms"]
    assert read_layout_categories(logger.log_dir) == [["grad_norm"]]


def test_state_and_state_key() -> None:
    a, b = GradientNormMonitor(norm_type=2.0), GradientNormMonitor(norm_type=1.0)
    assert a.state_key != b.state_key
    a._last_logged = {None: 41}
    b.load_state_dict(a.state_dict())
    assert b._last_logged == {None: 41}
    b.load_state_dict({"last_logged_step": 7})  # checkpoints from before per-optimizer steps
    assert b._last_logged == {None: 7}
    b.load_state_dict({})  # checkpoints from before a key existed
    assert b._last_logged == {None: -1}


def test_norm_type_accepts_inf_string() -> None:
    assert GradientNormMonitor(norm_type="inf").norm_type == math.inf


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"norm_type": 0.0}, "`norm_type` must be a number > 0 or 'inf', got 0.0"),
        ({"norm_type": -2}, "`norm_type`"),
        ({"norm_type": "two"}, "got 'two'"),
        ({"granularity": "layer"}, "`granularity` must be one of ('module', 'parameter'), got 'layer'."),
        ({"log_every_n_steps": 0}, "`log_every_n_steps` must be None or an integer >= 1, got 0."),
        ({"log_every_n_steps": True}, "`log_every_n_steps`"),
    ],
)
def test_argument_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        GradientNormMonitor(**kwargs)
