"""The multi-seed trainer's resource, pruning and Trainer-argument checks name the argument."""

from __future__ import annotations

import pytest

from lightning_landscape.multiseed._config_checks import (
    OWNED_TRAINER_ARGS,
    check_pruning,
    check_resources,
    check_trainer_kwargs,
)


def test_pruning_schedule_checks() -> None:
    check_pruning(None, 1 / 3, "epochs", "sequential", {})
    check_pruning([2, 5], 0.5, "epochs", "sequential", {"max_epochs": 10})
    with pytest.raises(ValueError, match="`prune_rungs` must be strictly increasing"):
        check_pruning([5, 2], 0.5, "epochs", "sequential", {"max_epochs": 10})
    with pytest.raises(ValueError, match="`prune_rungs`"):
        check_pruning([2], 0.5, "epochs", "vectorized", {"max_epochs": 10})
    with pytest.raises(ValueError, match="`prune_unit`"):
        check_pruning([2], 0.5, "minutes", "sequential", {"max_epochs": 10})


def test_resources_and_trainer_arguments() -> None:
    check_resources(1, 0, None, 0)
    with pytest.raises(ValueError, match="`cpus_per_seed` must be >= 0"):
        check_resources(-1, 0, None, 0)
    with pytest.raises(ValueError, match="`max_retries`"):
        check_resources(1, 0, None, -2)
    check_trainer_kwargs({"max_epochs": 2})
    owned = next(iter(OWNED_TRAINER_ARGS))
    with pytest.raises((ValueError, TypeError), match=owned):
        check_trainer_kwargs({owned: None})
