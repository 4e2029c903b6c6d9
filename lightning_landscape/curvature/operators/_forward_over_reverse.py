r"""Hessian-vector products by forward-over-reverse differentiation: ``torch.func.jvp`` of the gradient.

.. math::

    Hv = \frac{\partial}{\partial t} \nabla_\theta L(\theta + t v) \Big|_{t=0}

One forward pass carrying tangents through a reverse pass: no gradient graph is kept between products, and
the cost is about that of the double backward. The loss is evaluated by
:func:`torch.func.functional_call` on the selected parameters (tied weights stay tied), inside the
operator's probe context (eval mode, buffers swapped, private RNG, math attention).

Torch's forward-mode AD has no rule for every backward: ``F.mse_loss``'s writes into an immutable zero
tangent ("ZeroTensors are immutable", pytorch issue 123996), custom ``autograd.Function``\ s without a
``jvp`` have none. Such a failure is raised as a :class:`RuntimeError` naming the other two methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

LossFn = Callable[[nn.Module, Any], Tensor]


class _LossOf(nn.Module):
    """``loss_fn(model, batch)`` as a module, so that ``functional_call`` can swap the model's parameters."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.model, batch).reshape(())


class ForwardOverReverse:
    """The products :math:`H_i v` of the loss on one batch, for the rows of a ``[j, n]`` block.

    Args:
        model: the model.
        loss_fn: ``loss_fn(model, batch) -> scalar``.
        names: the selected parameters' names (``named_parameters`` order).
        params: the selected parameters (their order is the order of the flat vectors).
    """

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, names: Sequence[str], params: Sequence[Tensor]
    ) -> None:
        self.wrapper = _LossOf(model, loss_fn)
        self.names = [f"model.{n}" for n in names]
        self.params = list(params)

    def __call__(self, batch: Any, rows: Tensor) -> Tensor:
        """``[j, n]`` products of the rows of ``rows`` with the Hessian of the loss on ``batch``."""
        primals = {n: p.detach() for n, p in zip(self.names, self.params, strict=True)}

        def loss(values: dict[str, Tensor]) -> Tensor:
            return torch.func.functional_call(self.wrapper, values, (batch,), strict=False)

        grad = torch.func.grad(loss)
        out = []
        for row in rows:
            tangents, offset = {}, 0
            for n, p in zip(self.names, self.params, strict=True):
                tangents[n] = row[offset : offset + p.numel()].view_as(p).to(p.dtype)
                offset += p.numel()
            try:
                hv = torch.func.jvp(grad, (primals,), (tangents,))[1]
            except (RuntimeError, NotImplementedError) as err:
                raise RuntimeError(
                    "hvp='forward_over_reverse' cannot differentiate this model: torch's forward-mode AD "
                    f"failed ({str(err).splitlines()[0]}); e.g. F.mse_loss's backward has no usable forward "
                    "rule (pytorch issue 123996) and custom autograd.Functions need a jvp. Use "
                    "hvp='double_backward' or hvp='finite_difference' (hvp='auto' picks one that works)."
                ) from err
            out.append(torch.cat([hv[n].reshape(-1) for n in self.names]))
        return torch.stack(out)


__all__ = ["ForwardOverReverse"]
