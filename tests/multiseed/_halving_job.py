"""A 6-seed successive-halving job run in a subprocess; with MULTISEED_KILL_SEED/STEP set it SIGKILLs
itself when that seed reaches that global step.

Usage: python _halving_job.py ROOT_DIR
"""

from __future__ import annotations

import json
import os
import sys

from _tiny import QUIET, KillAt, TinyRegressor, loaders

from lightning_landscape.multiseed import MultiSeedTrainer

if __name__ == "__main__":
    callbacks = []
    if "MULTISEED_KILL_SEED" in os.environ:
        callbacks.append(
            KillAt(int(os.environ["MULTISEED_KILL_SEED"]), int(os.environ["MULTISEED_KILL_STEP"]))
        )
    train, val = loaders()
    trainer = MultiSeedTrainer(
        seeds=6, root_dir=sys.argv[1], max_epochs=4, logger=False, callbacks=callbacks, quiet=True,
        prune_rungs=[1, 2], prune_keep=0.5, **QUIET,
    )  # fmt: skip
    result = trainer.fit(TinyRegressor(lr=0.2, dropout=0.2), train_dataloaders=train, val_dataloaders=val)
    print(
        "RESULT",
        json.dumps({str(r.seed): [r.status, r.score, r.extra.get("rung_scores")] for r in result.runs}),
    )
