"""Named monitors, per-block Hessians, convergence reports and the private-Lightning module, on real fits."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_landscape import GradientNormMonitor, HessianEigenMonitor, RiskGapMonitor
from lightning_landscape.callbacks import _lightning, tags
from tests.callbacks._cb_helpers import TinyRegression, make_data, make_loader, mse_loss_fn
from tests.callbacks._events import read_layout_categories, read_scalars
from tests.oracle import dense_hessian


def _fit(tmp_path: Path, callbacks: list[pl.Callback], trainer_kwargs: dict[str, Any], **kwargs: Any) -> Any:
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(callbacks=callbacks, logger=logger, **{**trainer_kwargs, **kwargs})
    model = TinyRegression()
    trainer.fit(model, make_loader(n=32, batch_size=8), make_loader(n=16, batch_size=8, seed=1))
    return model, trainer, read_scalars(logger.log_dir), logger.log_dir


def test_two_named_monitors_of_one_kind_write_separate_series(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    train = HessianEigenMonitor(k=1, every_n_steps=4, tol=1e-8)
    val = HessianEigenMonitor(k=1, every_n_steps=4, tol=1e-8, dataloader="val", name="val")
    assert train.state_key != val.state_key
    norms = [GradientNormMonitor(), GradientNormMonitor(norm_type="inf", name="max", per_layer=False)]
    model, _, s, log_dir = _fit(tmp_path, [train, val, *norms], trainer_kwargs, max_steps=4)
    x, y = make_data(16, seed=1)
    want_val = float(torch.linalg.eigvalsh(dense_hessian(model, mse_loss_fn, [(x[:8], y[:8])]))[-1])
    x, y = make_data(32)
    want_train = float(torch.linalg.eigvalsh(dense_hessian(model, mse_loss_fn, [(x[:8], y[:8])]))[-1])
    assert s[tags.hessian_eig_tag(1)] == {3: pytest.approx(want_train, rel=1e-6)}
    assert s[tags.hessian_eig_tag(1, name="val")] == {3: pytest.approx(want_val, rel=1e-6)}
    assert abs(want_val - want_train) > 1e-3  # two different series, not one interleaved
    assert sorted(s[tags.grad_norm_total_tag(name="max")]) == sorted(s[tags.GRAD_NORM_TOTAL]) == [0, 1, 2, 3]
    assert not [t for t in s if t.startswith("grad_norm/max/net")]
    assert read_layout_categories(log_dir) == [["grad_norm", "grad_norm/max", "hessian", "hessian/val"]]


def test_per_block_and_selected_parameters_against_dense_blocks(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    blocks = HessianEigenMonitor(k=2, every_n_steps=4, smallest=True, tol=1e-8, blocks=["net.0", "net.3"])
    head = HessianEigenMonitor(k=1, every_n_steps=4, tol=1e-8, params=r"^net\.3\.", name="head")
    model, _, s, _ = _fit(tmp_path, [blocks, head], trainer_kwargs, max_steps=4)
    x, y = make_data(32)
    batch = (x[:8], y[:8])
    full = dense_hessian(model, mse_loss_fn, [batch])
    for block, names in [
        ("net.0", ["net.0.weight", "net.0.bias"]),
        ("net.3", ["net.3.weight", "net.3.bias"]),
    ]:
        eig = torch.linalg.eigvalsh(dense_hessian(model, mse_loss_fn, [batch], names=names))
        assert s[tags.hessian_eig_tag(1, block=block)][3] == pytest.approx(float(eig[-1]), rel=1e-6)
        assert s[tags.hessian_eig_tag(2, block=block)][3] == pytest.approx(float(eig[-2]), rel=1e-6)
        assert s[tags.hessian_tag(tags.EIG_MIN, block=block)][3] == pytest.approx(float(eig[0]), abs=1e-7)
        assert s[tags.hessian_tag(tags.CONVERGED, block=block)][3] == 1.0
    # The blocks are diagonal blocks of the full Hessian, and the full one is logged as well.
    assert s[tags.hessian_eig_tag(1)][3] == pytest.approx(float(torch.linalg.eigvalsh(full)[-1]), rel=1e-6)
    head_eig = torch.linalg.eigvalsh(full[-5:, -5:])  # net.3 holds the last 4 + 1 parameters
    assert s[tags.hessian_eig_tag(1, name="head")][3] == pytest.approx(float(head_eig[-1]), rel=1e-6)


def test_unconverged_values_are_flagged_and_warned_once(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    logged = HessianEigenMonitor(k=3, every_n_steps=1, max_iter=4, smallest=True, name="log")
    skipped = HessianEigenMonitor(
        k=3, every_n_steps=1, max_iter=4, smallest=True, unconverged="skip", name="skip"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, s, _ = _fit(tmp_path, [logged, skipped], trainer_kwargs, max_steps=3)
    ours = [str(w.message) for w in caught if "did not converge" in str(w.message)]
    assert len(ours) == 2  # once per monitor, not once per probe
    assert "logged anyway" in ours[0] and "not logged" in ours[1]
    assert s[tags.hessian_tag(tags.CONVERGED, name="log")] == {0: 0.0, 1: 0.0, 2: 0.0}
    assert s[tags.hessian_tag(tags.CONVERGED, name="skip")] == {0: 0.0, 1: 0.0, 2: 0.0}
    assert len(s[tags.hessian_eig_tag(3, name="log")]) == 3
    assert tags.hessian_eig_tag(3, name="skip") not in s  # 4 Lanczos steps cannot hold 3 converged values
    assert logged.num_unconverged == skipped.num_unconverged == 3


def test_the_private_lightning_accesses(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    seen: dict[str, Any] = {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
            _lightning.load_val_dataloaders(trainer)
            seen["val_loaders"] = trainer.val_dataloaders

        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
            seen.setdefault("steps", []).append(_lightning.batches_that_stepped(trainer))

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
            seen["epoch"] = _lightning.running_epoch_metrics(trainer)
            seen["keys"] = _lightning.running_logged_keys(trainer)

    s = _fit(tmp_path, [Probe(), RiskGapMonitor()], trainer_kwargs, max_epochs=1)[2]
    assert seen["val_loaders"] is not None
    assert seen["steps"] == sorted(s["train_loss_step"]) == [0, 1, 2, 3]  # the step Lightning logs at
    assert seen["epoch"]["train_loss_epoch"] == pytest.approx(s["train_loss_epoch"][3], rel=1e-6)
    assert {"train_loss_step", "train_loss_epoch"} <= seen["keys"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "a/b"}, "`name` must be None or a non-empty str"),
        ({"params": []}, "`params` must be None, a regex"),
        ({"blocks": "net.0"}, "`blocks` must be None or a non-empty list"),
        ({"blocks": ["net 0"]}, "`blocks` must be None or a non-empty str"),
        ({"unconverged": "drop"}, "`unconverged` must be one of ('log', 'skip'), got 'drop'."),
        ({"train_mode": "yes"}, "`train_mode` must be None, False or True, got 'yes'."),
    ],
)
def test_new_argument_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        HessianEigenMonitor(**kwargs)
    if "name" in kwargs:
        with pytest.raises(ValueError, match=re.escape(match)):
            GradientNormMonitor(**kwargs)


def test_layout_charts_of_named_monitors_and_blocks_match_only_their_tags() -> None:
    from lightning_landscape.callbacks._tensorboard import _charts

    unnamed = _charts(tags.HESSIAN_SECTION, None, ["val"], ["net.0"])
    named = _charts(tags.HESSIAN_SECTION, "val", ["val"], [])
    logged = [
        tags.hessian_eig_tag(1),
        tags.hessian_eig_tag(1, name="val"),
        tags.hessian_eig_tag(1, block="net.0"),
        tags.hessian_tag(tags.CONVERGED),
        tags.hessian_tag(tags.CONVERGED, name="val"),
        tags.hessian_tag(tags.CONVERGED, block="net.0"),
    ]

    def matched(charts: dict[str, list[Any]]) -> dict[str, list[str]]:
        return {c: [t for t in logged if any(re.match(r, t) for r in spec[1])] for c, spec in charts.items()}

    assert matched(unnamed)["eigenvalues"] == ["hessian/eig_1"]
    assert matched(unnamed)["eigenvalues net.0"] == ["hessian/net.0/eig_1"]
    assert matched(unnamed)["converged"] == ["hessian/converged", "hessian/net.0/converged"]
    assert matched(named)["eigenvalues"] == ["hessian/val/eig_1"]
    assert matched(named)["converged"] == ["hessian/val/converged"]
    grad = _charts(tags.GRAD_NORM_SECTION, None, ["max"], [])
    names = ["grad_norm/total", "grad_norm/optimizer_1/total", "grad_norm/net.0", "grad_norm/max/total"]
    per_layer = [t for t in names if re.match(grad["per layer"][1][0], t)]
    assert per_layer == ["grad_norm/net.0"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"blocks": ["net.9"]}, r"`blocks`: the prefixes \['net.9'\] selects no trainable parameter"),
        ({"params": "^head"}, r"`params`: the regex '\^head' selects no trainable parameter"),
        ({"k": 5, "blocks": ["net.3"]}, r"`k`=5 must be below the 5 parameters of `blocks`=\['net.3'\]"),
    ],
)
def test_bad_parameter_selections_are_refused_before_training(
    kwargs: dict[str, Any], match: str, trainer_kwargs: dict[str, Any]
) -> None:
    trainer = pl.Trainer(
        callbacks=[HessianEigenMonitor(**kwargs)], logger=False, max_steps=1, **trainer_kwargs
    )
    with pytest.raises(MisconfigurationException, match=match):
        trainer.fit(TinyRegression(), make_loader(n=16))
    assert trainer.global_step == 0
