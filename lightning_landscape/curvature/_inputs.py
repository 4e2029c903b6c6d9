"""What the curvature functions take: the loss function's type, batches and their sizes, the variables.

``loss_fn(model, batch)`` and a list of fixed batches are the inputs of every model-level function of the
package (curvature and landscape); they are checked once, here, where they enter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

LossFn = Callable[[nn.Module, Any], Tensor]
"""``loss_fn(model, batch) -> scalar tensor``: the loss of ``model`` on one batch."""


def _first_tensor(batch: Any) -> Tensor | None:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping):
        items: Any = batch.values()
    elif isinstance(batch, (list, tuple)):
        items = batch
    else:
        return None
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def batch_size(batch: Any) -> int:
    """The size of a batch: the leading dimension of the first tensor found in it (depth first).

    Args:
        batch: a tensor, or a (nested) tuple, list or dict containing tensors.

    Raises:
        TypeError: if the batch holds no tensor.

    Example::

        >>> batch_size({"x": torch.zeros(8, 3), "y": torch.zeros(8)})
        8
    """
    tensor = _first_tensor(batch)
    if tensor is None:
        raise TypeError(
            "Each batch must be a tensor or a tuple/list/dict holding at least one tensor, "
            f"got {type(batch).__name__}."
        )
    return int(tensor.shape[0]) if tensor.dim() > 0 else 1


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model`` with ``requires_grad=True``, each once, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def validate_inputs(model: Any, loss_fn: Any, batches: Any) -> list[Any]:
    """Check the common arguments of the curvature functions; return the batches as a list.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``, ``loss_fn`` is not callable or ``batches`` is not
            a list/tuple of batches.
        ValueError: if ``batches`` is empty or the model has no trainable parameters.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable as loss_fn(model, batch), got {type(loss_fn).__name__}.")
    if isinstance(batches, (Tensor, Mapping)) or not isinstance(batches, Sequence):
        raise TypeError(
            "`batches` must be a list or tuple of batches (tensors, tuples or dicts), "
            f"got {type(batches).__name__}."
        )
    if len(batches) == 0:
        raise ValueError("`batches` is empty: pass at least one batch.")
    if not trainable_parameters(model):
        raise ValueError("`model` has no trainable parameters (none with requires_grad=True).")
    return list(batches)


def make_generator(seed: int) -> torch.Generator:
    """A private CPU generator: random vectors are drawn on the CPU (identical on every device)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


class LossOf(nn.Module):
    """``loss_fn(model, batch)`` as a module whose only child is ``model``, for ``functional_call``."""

    _loss_fn: LossFn

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "_loss_fn", loss_fn)  # not a submodule, even if it is a Module

    def forward(self, batch: Any) -> Tensor:
        loss = self._loss_fn(self.model, batch)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"`loss_fn` must return a scalar tensor, got {shape}.")
        return loss.reshape(())
