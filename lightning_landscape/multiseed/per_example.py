"""The noise floor after the selection: is the winner better than a typical seed beyond the test set's noise?

**The hook.** A ``test_step`` that returns a dict with the key ``"per_example"`` (a 1-d tensor: one value
per example of the batch, its loss, or its 0/1 correctness) gives the per-example test values::

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("test_acc", (logits.argmax(1) == y).float().mean())
        return {"per_example": (logits.argmax(1) == y).float()}

After the selection, the winner's and the median seed's (by validation) best checkpoints are tested
once more with a callback that collects those values; :func:`~.noise_floor.noise_floor` compares them
by a paired bootstrap over test examples. 0/1 values with ``mode="max"`` are correctness (the lead in
points); anything else is a per-example value in the monitor's direction. Without the hook, a test
metric whose name contains ``"acc"`` (an accuracy in ``[0, 1]``) gets the unpaired binomial bound
(:func:`~.noise_floor.binomial_noise_floor`, with the number of test examples counted from the batches);
else the verdict is ``"unknown"``. The block ``noise_floor`` of ``summary.json`` holds the numbers and the
line; the trainer logs the line and the CLI prints it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from lightning_landscape.multiseed.noise_floor import Kind, NoiseFloor, binomial_noise_floor, noise_floor
from lightning_landscape.multiseed.result import MultiSeedResult, SeedRun
from lightning_landscape.multiseed.selection import Mode, rank_by_validation

#: The key of ``test_step``'s returned dict that holds the batch's per-example values.
PER_EXAMPLE_KEY = "per_example"


def batch_size_of(batch: Any) -> int | None:
    """The number of examples in a batch: the first dimension of its first tensor (``None``: none found).

    Example:
        >>> batch_size_of((torch.zeros(5, 2), torch.zeros(5))), batch_size_of({"x": torch.zeros(3)})
        (5, 3)
    """
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else None
    items = (
        batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else []
    )
    for item in items:
        size = batch_size_of(item)
        if size is not None:
            return size
    return None


class PerExampleCollector(Callback):
    """Collects ``test_step``'s ``{"per_example": tensor}`` values and counts the test examples."""

    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []
        self.batches_without = 0
        self.examples: int | None = 0

    @override
    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        size = batch_size_of(batch)
        self.examples = None if size is None or self.examples is None else self.examples + size
        values = outputs.get(PER_EXAMPLE_KEY) if isinstance(outputs, Mapping) else None
        if not isinstance(values, torch.Tensor):
            self.batches_without += 1
            return
        self.values.append(values.detach().reshape(-1).to("cpu", torch.float64))

    def per_example(self) -> np.ndarray | None:
        """The values of every test example in order, or ``None`` unless every batch gave them."""
        if not self.values or self.batches_without:
            return None
        return torch.cat(self.values).numpy()


def median_seed(result: MultiSeedResult) -> SeedRun | None:
    """The finished seed of median validation rank (0-based rank ``K // 2``, best first: of an even count,
    the worse of the middle two), or the worst seed when that is the winner; ``None`` with fewer than two
    finished seeds.

    Example:
        >>> runs = [SeedRun(s, "finished", v) for s, v in enumerate([0.3, 0.1, 0.2, 0.4])]
        >>> median_seed(MultiSeedResult(runs, "val_loss", "min", 1, 0.1, "", "")).seed
        0
    """
    finished = [r for r in result.finished if r.score is not None]
    if len(finished) < 2:
        return None
    order = rank_by_validation([float(r.score) for r in finished], result.mode)  # type: ignore[arg-type]
    pick = finished[order[len(order) // 2]]
    return pick if pick.seed != result.best_seed else finished[order[-1]]


def judge(
    winner: tuple[float | None, np.ndarray | None, int | None],
    other: tuple[float | None, np.ndarray | None, int | None],
    test_monitor: str,
    mode: Mode,
    confidence: float = 0.9,
) -> NoiseFloor:
    """The noise floor from two seeds' ``(test score, per-example values, test examples)``.

    Example:
        >>> judge((0.93, None, 10_000), (0.925, None, 10_000), "test_acc", "max").verdict_line()
        "winner's test lead 0.5 points; test-set noise +-0.6: not beyond noise"
        >>> judge((0.2, None, 100), (0.3, None, 100), "test_loss", "min").verdict
        'unknown'
    """
    (w_score, w_values, w_n), (o_score, o_values, _) = winner, other
    if w_values is not None and o_values is not None and w_values.shape == o_values.shape:
        binary = bool(np.all((w_values == 0) | (w_values == 1)) and np.all((o_values == 0) | (o_values == 1)))
        kind: Kind = "correct" if binary and mode == "max" else "loss"
        return noise_floor(w_values.tolist(), o_values.tolist(), kind=kind, mode=mode, confidence=confidence)
    lead = None
    if w_score is not None and o_score is not None:
        lead = (o_score - w_score) if mode == "min" else (w_score - o_score)
    accuracy_like = "acc" in test_monitor.lower() and mode == "max"
    if (
        accuracy_like
        and w_score is not None
        and o_score is not None
        and w_n
        and 0.0 <= w_score <= 1.0
        and 0.0 <= o_score <= 1.0
    ):
        return binomial_noise_floor(w_score, o_score, n_test=w_n, confidence=confidence)
    return NoiseFloor.unknown(lead=lead, kind="correct" if accuracy_like else "loss", confidence=confidence)


__all__ = ["PER_EXAMPLE_KEY", "PerExampleCollector", "batch_size_of", "judge", "median_seed"]
