"""Strategies the Hessian operator refuses, each with why and what to use instead."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_landscape.curvature import HessianOperator
from lightning_landscape.curvature.operators._strategies import refuse_unsupported, wants_fsdp


def _loss(m: nn.Module, b: torch.Tensor) -> torch.Tensor:
    return m(b).pow(2).mean()


def test_deepspeed_partitioned_parameters_are_refused_by_name() -> None:
    model = nn.Linear(2, 1)
    model.weight.ds_id = 0  # type: ignore[attr-defined]  # what ZeRO-3 attaches to its parameters
    with pytest.raises(ValueError, match=r"DeepSpeed.*FSDP2.*DDP"):
        HessianOperator(model, _loss, [torch.ones(3, 2)])


def test_plain_models_are_neither_refused_nor_fsdp() -> None:
    model = nn.Linear(2, 1)
    refuse_unsupported(model, "double_backward")
    assert not wants_fsdp(model) and not wants_fsdp("not a module")
    assert type(HessianOperator(model, _loss, [torch.ones(3, 2)])) is HessianOperator
