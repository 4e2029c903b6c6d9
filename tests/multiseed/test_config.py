"""The one configuration: MultiSeedTrainer's signature is its fields, each checked once, where it enters."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest

from lightning_landscape.multiseed import MultiSeedConfig, MultiSeedTrainer
from lightning_landscape.multiseed.config import (
    check_seeds,
    check_trainer_kwargs,
    config_parameters,
    derive_test_monitor,
    names_test_set,
)


def test_the_trainer_signature_is_the_configuration():
    fields = {f.name: f for f in dataclasses.fields(MultiSeedConfig)}
    params = inspect.signature(MultiSeedTrainer).parameters
    assert list(params) == [*[n for n in fields if n != "trainer_kwargs"], "trainer_kwargs"]
    assert params["trainer_kwargs"].kind is inspect.Parameter.VAR_KEYWORD
    for name, param in params.items():
        if name != "trainer_kwargs":
            assert param.default == fields[name].default, name
    assert [p.name for p in config_parameters()] == list(params)


def test_positional_and_keyword_arguments_land_in_their_fields(tmp_path: Path):
    trainer = MultiSeedTrainer(3, "val_acc", "max", tmp_path, max_epochs=2, quiet=True)
    config = trainer.config
    assert (config.seeds, config.monitor, config.mode, config.root_dir) == (3, "val_acc", "max", tmp_path)
    assert config.quiet is True and config.trainer_kwargs == {"max_epochs": 2}
    assert trainer.seeds == [0, 1, 2] and trainer.root_dir == tmp_path
    assert trainer.trainer_kwargs is config.trainer_kwargs
    assert MultiSeedTrainer().config == MultiSeedConfig()
    with pytest.raises(TypeError, match="too many positional arguments"):
        MultiSeedTrainer(*range(len(config_parameters())))
    with pytest.raises(TypeError, match="multiple values for argument 'seeds'"):
        MultiSeedTrainer(2, seeds=3)


@pytest.mark.parametrize(
    ("seeds", "expected"),
    [(1, [0]), (3, [0, 1, 2]), ([5, 2, 9], [5, 2, 9]), ((7,), [7]), ([2**32 - 1], [2**32 - 1])],
)
def test_seed_lists(seeds: Any, expected: list[int]):
    assert check_seeds(seeds) == expected
    assert MultiSeedConfig(seeds=seeds).seed_list == expected


@pytest.mark.parametrize(
    ("seeds", "error", "match"),
    [
        (0, ValueError, "`seeds` must be at least 1"),
        ([], ValueError, "`seeds` must be at least 1"),
        ([1, 2, 1], ValueError, r"duplicates \[1\]"),
        ([2**32], ValueError, "`seeds` must lie in"),
        ("3", TypeError, "`seeds`"),
        (True, TypeError, "`seeds`"),
        ([1, False], TypeError, "integers only"),
    ],
)
def test_bad_seed_lists_are_refused(seeds: Any, error: type[Exception], match: str):
    with pytest.raises(error, match=match):
        check_seeds(seeds)
    with pytest.raises(error, match=match):
        MultiSeedConfig(seeds=seeds)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"test": "some"}, ValueError, "`test` must be one of"),
        ({"test_monitor": ""}, ValueError, "`test_monitor`"),
        ({"monitor": "test_loss"}, ValueError, "selects the seed on the test set"),
        ({"still_improving_fraction": 1.5}, ValueError, "`still_improving_fraction`"),
        ({"quiet": "yes"}, TypeError, "`quiet`"),
        ({"root_dir": ""}, TypeError, "`root_dir` must be a path"),
        ({"allow_config_change": 1}, TypeError, "`allow_config_change`"),
        ({"ray_address": 5}, TypeError, "`ray_address`"),
        ({"cpus_per_seed": float("nan")}, TypeError, "`cpus_per_seed` must be a number"),
        ({"barriers": "some"}, ValueError, "`barriers` must be False, True, 'best' or 'all'"),
        ({"barrier_tol": -0.1}, ValueError, "`barrier_tol` must be a number >= 0"),
        ({"align": "rebasin"}, ValueError, "`align` must be None, 'weights' or 'activations'"),
        ({"align": None}, None, None),
        ({"soup": "best"}, ValueError, "`soup` must be one of"),
        ({"ensemble": -1}, ValueError, "`ensemble` must be an integer >= 0"),
        ({"ensemble": True}, ValueError, "`ensemble` must be an integer >= 0"),
        ({"trainer_kwargs": {"plugins": []}}, None, None),
    ],
)
def test_each_field_is_checked_when_the_configuration_is_built(
    kwargs: dict[str, Any], error: type[Exception] | None, match: str | None
):
    if error is None:
        MultiSeedConfig(**kwargs)
        return
    with pytest.raises(error, match=match):
        MultiSeedConfig(**kwargs)


def test_selecting_on_the_test_set_when_asked_and_the_derived_values():
    config = MultiSeedConfig(monitor="test/acc", mode="max", select_on_test=True, barriers="all")
    assert config.test_metric == "test/acc" and config.barriers_which == "all"
    assert MultiSeedConfig(test_monitor="test_acc").test_metric == "test_acc"
    assert MultiSeedConfig(barriers=False).barriers_which is None
    assert derive_test_monitor("val/validation_loss") == "test/validation_loss"
    assert not names_test_set("contest_loss") and names_test_set("loss/test")


def test_a_configuration_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        MultiSeedConfig().seeds = 3  # type: ignore[misc]


def test_trainer_arguments_a_seed_cannot_take_are_refused():
    from lightning.fabric.plugins import TorchCheckpointIO

    with pytest.raises(ValueError, match="must not hold a CheckpointIO"):
        check_trainer_kwargs({"plugins": [TorchCheckpointIO()]})
    with pytest.raises(TypeError, match=r"unknown Trainer argument\(s\) \['max_stepz'\]"):
        check_trainer_kwargs({"max_stepz": 3})
    check_trainer_kwargs({"max_steps": 3, "logger": False, "callbacks": []})
