r"""Hessian-vector products as central differences of two gradients.

.. math::

    Hv \approx \frac{\nabla L(\theta + h v) - \nabla L(\theta - h v)}{2 h}, \qquad
    h = \frac{\sqrt{\epsilon} \, \max(\|\theta\|_2, 1)}{\|v\|_2},

with :math:`\epsilon` the machine epsilon of the parameters' dtype and :math:`\theta` the selected
parameters: the step moves each coordinate by about :math:`\sqrt{\epsilon}` of its own scale. The error is a
truncation :math:`O(h^2 \|v\|^2)` (the third derivative), the rounding of :math:`\theta \pm h v` and of
the gradients, :math:`O(\epsilon \|\theta\| / (h \|v\|)) = O(\sqrt{\epsilon})`, and, in piecewise-linear
networks, the gradient's jumps where a ReLU changes sign inside :math:`[\theta - hv, \theta + hv]`, which no
step removes but a smaller one makes rarer. :math:`\epsilon^{1/3}` would balance the first two alone (what
smooth models prefer); measured on the test zoo it crosses far more kinks in float32 (a ReLU net: 2e-2
relative error, against 2e-5 with :math:`\sqrt{\epsilon}`). Measured relative errors
(``tests/curvature/operators/test_hvp_methods.py``): float64 about 1e-8; float32 1e-5 to 1e-4 on smooth or
lightly kinked models, and no better than 0.5 on a small ReLU CNN whose units sit near their kinks.

Only first-order backward passes: the route through kernels without a double backward (fused attention)
and under FSDP, where ``torch.autograd.grad`` w.r.t. sharded parameters has no graph but ``backward()``
fills sharded gradients. The parameters are moved in place and put back bit for bit from a copy (one
parameter-sized copy while a product runs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def step_size(theta_norm: float, v_norm: float, dtype: torch.dtype) -> float:
    """The central-difference step :math:`h = \\sqrt{\\epsilon} \\max(\\|\\theta\\|, 1) / \\|v\\|`.

    Example:
        >>> f"{step_size(4.0, 2.0, torch.float32):.2e}"
        '6.91e-04'
    """
    return math.sqrt(float(torch.finfo(dtype).eps)) * max(theta_norm, 1.0) / max(v_norm, 1e-300)


class FiniteDifference:
    """Central differences of ``gradient()`` at :math:`\\theta \\pm h v` for the rows of ``[j, n]`` blocks.

    Args:
        locals_: the tensors to move in place (the parameters, or under FSDP their local shards).
        split: cuts a flat vector into pieces shaped like ``locals_``.
        gradient: the flat gradient of the operator's loss at the current values (all batches, weighted).
        norm: the global 2-norm of a list of local pieces (all-reduced under FSDP).
    """

    def __init__(
        self,
        locals_: Sequence[Tensor],
        split: Callable[[Tensor], list[Tensor]],
        gradient: Callable[[], Tensor],
        norm: Callable[[Sequence[Tensor]], float],
    ) -> None:
        self.locals = list(locals_)
        self.split = split
        self.gradient = gradient
        self.norm = norm

    def __call__(self, rows: Tensor) -> Tensor:
        """``[j, n]`` products of the rows of ``rows``."""
        saved = [t.detach().clone() for t in self.locals]
        theta_norm = self.norm(saved)
        out = []
        try:
            for row in rows:
                v_norm = float(torch.linalg.vector_norm(row.double()))
                if v_norm == 0.0 or not math.isfinite(v_norm):
                    out.append(torch.zeros_like(row) if v_norm == 0.0 else torch.full_like(row, math.nan))
                    continue
                h = step_size(theta_norm, v_norm, saved[0].dtype)
                pieces = self.split(row)
                grads = []
                for sign in (1.0, -1.0):
                    with torch.no_grad():
                        for t, s, d in zip(self.locals, saved, pieces, strict=True):
                            t.copy_(s).add_(d.to(t.dtype), alpha=sign * h)
                    grads.append(self.gradient())
                out.append((grads[0] - grads[1]) / (2.0 * h))
        finally:
            with torch.no_grad():
                for t, s in zip(self.locals, saved, strict=True):
                    t.copy_(s)
        return torch.stack(out)


__all__ = ["FiniteDifference", "step_size"]
