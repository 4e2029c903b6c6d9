"""The Lightning side both Hessian monitors share (:mod:`lightning_landscape.callbacks._probe_monitor`): a
model that does not fit the probe's options is refused in ``setup`` under the monitor's own name, before the
first step, and the probe batches are drawn from the named loader when training starts."""

from __future__ import annotations

import re
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_landscape import EdgeOfStabilityMonitor, HessianEigenMonitor
from lightning_landscape.callbacks._probe_monitor import ProbeMonitor
from tests.callbacks._cb_helpers import TinyRegression, make_loader


@pytest.mark.parametrize("monitor", [HessianEigenMonitor, EdgeOfStabilityMonitor])
def test_a_selection_that_fits_nothing_is_refused_under_the_monitors_name(
    monitor: type[ProbeMonitor], trainer_kwargs: dict[str, Any]
) -> None:
    steps: list[int] = []

    class Steps(pl.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            steps.append(1)

    trainer = pl.Trainer(max_steps=1, callbacks=[monitor(params=["head"]), Steps()], **trainer_kwargs)
    expected = f"{monitor.__name__}: `params`: the prefixes ['head'] selects no trainable parameter"
    with pytest.raises(MisconfigurationException, match=re.escape(expected)):
        trainer.fit(TinyRegression(), make_loader(n=16))
    assert steps == []


@pytest.mark.parametrize("monitor", [HessianEigenMonitor, EdgeOfStabilityMonitor])
def test_the_probe_batches_are_drawn_when_training_starts(
    monitor: type[ProbeMonitor], trainer_kwargs: dict[str, Any]
) -> None:
    probe = monitor(every_n_steps=100, num_batches=2, seed=3)
    assert probe._batches is None
    loader = make_loader(n=32, batch_size=8, shuffle=True)
    pl.Trainer(max_steps=1, callbacks=[probe], **trainer_kwargs).fit(TinyRegression(), loader)
    assert probe._batches is not None and len(probe._batches) == 2
    x, _ = loader.dataset.tensors  # type: ignore[attr-defined]
    for batch in probe._batches:  # whole batches of the training set, drawn once
        assert batch[0].shape == (8, x.shape[1])
        assert all(any(torch.equal(row, r) for r in x) for row in batch[0])
