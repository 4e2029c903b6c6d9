"""The noise-floor hook on real tiny runs, against per-example values recomputed outside Lightning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from lightning_landscape.cli.help import format_result
from lightning_landscape.multiseed import MultiSeedTrainer
from lightning_landscape.multiseed.noise_floor import binomial_noise_floor, noise_floor
from lightning_landscape.multiseed.paths import SUMMARY_JSON
from lightning_landscape.multiseed.per_example import median_seed

QUIET: dict[str, Any] = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False}


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = ((x[:, 0] * x[:, 1] > 0) ^ (torch.rand(n, generator=g) < 0.1)).long()
    return TensorDataset(x, y)


class Classifier(LightningModule):
    def __init__(self, hook: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.hook = hook
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(1) == y).float().mean())

    @override
    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor] | None:
        x, y = batch
        correct = (self.net(x).argmax(1) == y).float()
        self.log("test_acc", correct.mean())
        return {"per_example": correct} if self.hook else None

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _run(root: Path, hook: bool) -> Any:
    train = DataLoader(_data(64, 1), batch_size=16, shuffle=True)
    val = DataLoader(_data(64, 2), batch_size=64)
    test = DataLoader(_data(300, 3), batch_size=64)
    trainer = MultiSeedTrainer(
        seeds=4, monitor="val_acc", mode="max", root_dir=root, max_epochs=2, quiet=True, **QUIET
    )
    return trainer.fit(
        Classifier(hook=hook), train_dataloaders=train, val_dataloaders=val, test_dataloaders=test
    )


def _correct(path: str) -> list[float]:
    model = Classifier()
    model.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    x, y = _data(300, 3).tensors
    with torch.no_grad():
        return (model.net(x).argmax(1) == y).float().tolist()


def test_per_example_hook_gives_the_paired_bootstrap(tmp_path: Path) -> None:
    result = _run(tmp_path, hook=True)
    other = median_seed(result)
    assert other is not None and other.seed != result.best_seed
    winner = next(r for r in result.runs if r.seed == result.best_seed)
    expected = noise_floor(_correct(winner.best_model_path), _correct(other.best_model_path), kind="correct")
    block = json.loads((tmp_path / SUMMARY_JSON).read_text())["noise_floor"]
    assert block["method"] == "paired bootstrap" and block["n_test"] == 300
    assert block["lead"] == pytest.approx(expected.lead, abs=1e-12)
    assert block["half_width"] == pytest.approx(expected.half_width, abs=1e-12)
    assert block["line"] == expected.verdict_line() and block["line"] in format_result(result)
    assert result.noise_floor == block
    # The extra test passes leave the record's test scores alone: only the winner is tested (test="best").
    assert [r.seed for r in result.runs if r.test_score is not None] == [result.best_seed]


def test_without_the_hook_an_accuracy_gets_the_binomial_bound(tmp_path: Path) -> None:
    result = _run(tmp_path, hook=False)
    other = median_seed(result)
    assert other is not None
    winner = next(r for r in result.runs if r.seed == result.best_seed)
    acc_w, acc_o = (sum(_correct(r.best_model_path)) / 300 for r in (winner, other))
    expected = binomial_noise_floor(acc_w, acc_o, n_test=300)
    floor = result.noise_floor
    assert floor is not None and floor["method"].startswith("binomial") and floor["n_test"] == 300
    assert floor["lead"] == pytest.approx(expected.lead, abs=1e-6)
    assert floor["half_width"] == pytest.approx(expected.half_width, abs=1e-6)
