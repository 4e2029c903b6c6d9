"""What a Hessian operator differentiates: the model, loss, batches and selected parameters, checked once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from lightning_landscape.curvature._checks import check_choice
from lightning_landscape.curvature._inputs import LossFn, validate_inputs
from lightning_landscape.curvature._params import ParamSelection, select_parameters
from lightning_landscape.curvature.operators._methods import HVP_METHODS, HvpMethod
from lightning_landscape.curvature.operators._strategies import refuse_unsupported

MemoryMode = Literal["auto", "reuse", "recompute"]
MEMORY_MODES = ("auto", "reuse", "recompute")


@dataclass(frozen=True)
class OperatorInputs:
    """What a :class:`HessianOperator` differentiates, checked once where it enters.

    Build it with :meth:`check`; a model-level function checks its own arguments against
    :attr:`num_params` before any evaluation and hands it to :meth:`HessianOperator.from_inputs`.

    Example:
        >>> import torch
        >>> inputs = OperatorInputs.check(nn.Linear(3, 1), lambda m, b: m(b).sum(), [torch.ones(2, 3)])
        >>> inputs.names, inputs.num_params
        (['weight', 'bias'], 4)
    """

    model: nn.Module
    loss_fn: LossFn
    batches: list[Any]
    names: list[str]
    params: list[Tensor]
    memory: MemoryMode = "auto"
    hvp: HvpMethod = "auto"

    @classmethod
    def check(
        cls,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Sequence[Any],
        memory: MemoryMode = "auto",
        params: ParamSelection = None,
        hvp: HvpMethod = "auto",
    ) -> OperatorInputs:
        """Validate the arguments of :class:`HessianOperator` (see there) and select its parameters.

        Raises:
            TypeError, ValueError: as :class:`HessianOperator`, before any evaluation.
        """
        checked = validate_inputs(model, loss_fn, batches)
        check_choice("memory", memory, MEMORY_MODES)
        check_choice("hvp", hvp, HVP_METHODS)
        refuse_unsupported(model, hvp)
        named = select_parameters(model, params)
        return cls(model, loss_fn, checked, [n for n, _ in named], [p for _, p in named], memory, hvp)

    @property
    def num_params(self) -> int:
        """The number of selected parameter entries: the size :math:`n` of the operator."""
        return sum(p.numel() for p in self.params)
