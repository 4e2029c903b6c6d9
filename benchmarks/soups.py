"""Soup and ensemble vs the best seed on the digits MLP: K seeds, a short run, held-out test split.

    python benchmarks/soups.py --seeds 8 --max_epochs 15

Prints one row per model (best seed, uniform soup, greedy soup, ensemble of the top m) with the module's
validation/test loss and the averaged-prediction NLL and accuracy on validation and test, and the wall time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.digits import DigitsDataModule, DigitsMLP
from lightning_landscape.multiseed import MultiSeedTrainer


class HeldOut(DigitsDataModule):
    """Digits with validation (20%) and a held-out test split (half of the validation share again)."""

    def setup(self, stage: str) -> None:
        first = self._train is None
        super().setup(stage)
        if first:
            assert self._train is not None
            n = len(self._train)
            self._test = Subset(self._train, range(n - n // 4, n))
            self._train = Subset(self._train, range(n - n // 4))  # type: ignore[assignment]

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self._test, batch_size=self.batch_size)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--max_epochs", type=int, default=15)
    p.add_argument("--ensemble", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp())
    common = dict(
        seeds=args.seeds,
        root_dir=root,
        monitor="val_loss",
        quiet=True,
        max_epochs=args.max_epochs,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        accelerator="cpu",
    )
    t0 = time.time()
    first = MultiSeedTrainer(**common, barriers="all").fit(DigitsMLP, datamodule=HeldOut())
    train = time.time() - t0
    import json

    block = json.loads((root / "summary.json").read_text())["barriers"]
    raw = [v for row in block["matrix"] for v in row if v]
    aligned = [v for row in block["aligned_matrix"] for v in row if v]
    dist = [v for row in block["functional_distance"]["matrix"] for v in row if v]
    print(f"# best seed {first.best_seed}; {block['summary']}")
    print(
        f"# raw barriers {min(raw):.3g}-{max(raw):.3g}, aligned {min(aligned):.3g}-{max(aligned):.3g},"
        f" disagreement {min(dist):.3g}-{max(dist):.3g} (all pairs)"
    )
    for soup in ("greedy", "uniform"):
        t0 = time.time()
        res = MultiSeedTrainer(**common, soup=soup, ensemble=args.ensemble, allow_config_change=True).fit(
            DigitsMLP, datamodule=HeldOut()
        )
        print(f"# {soup}: {time.time() - t0:.1f} s after training ({train:.1f} s for {args.seeds} seeds)")
        for row in res.combined:
            vp, tp = row["val_prediction"], row["test_prediction"]
            print(
                f"{row['name']:<20} seeds={row['seeds']} x{row['forward_passes']} val_loss={row['val']}"
                f" test_loss={row['test']} val nll {vp['nll']:.4f} acc {vp['accuracy']:.4f}"
                f" | test nll {tp['nll']:.4f} acc {tp['accuracy']:.4f}"
            )


if __name__ == "__main__":
    main()
