"""A 3-seed job run in a subprocess; with MULTISEED_KILL_SEED/STEP set it SIGKILLs itself mid-seed
(or sends itself MULTISEED_KILL_SIGNAL).

Usage: python _kill_job.py ROOT_DIR RECORD_FILE
"""

from __future__ import annotations

import json
import os
import sys

from _tiny import QUIET, KillAt, RecordStart, TinyRegressor, loaders

from lightning_landscape.multiseed import MultiSeedTrainer

if __name__ == "__main__":
    root, record = sys.argv[1], sys.argv[2]
    callbacks = [RecordStart(record)]
    if "MULTISEED_KILL_SEED" in os.environ:
        signum = int(os.environ.get("MULTISEED_KILL_SIGNAL", "9"))
        callbacks.append(
            KillAt(int(os.environ["MULTISEED_KILL_SEED"]), int(os.environ["MULTISEED_KILL_STEP"]), signum)
        )
    train, val = loaders()
    trainer = MultiSeedTrainer(
        seeds=3, root_dir=root, max_epochs=4, logger=False, callbacks=callbacks, **QUIET
    )
    result = trainer.fit(
        TinyRegressor(lr=0.2, dropout=float(os.environ.get("DROP", "0.2"))),
        train_dataloaders=train,
        val_dataloaders=val,
    )
    print("RESULT", json.dumps({str(r.seed): r.score for r in result.runs}))
