"""The product methods of :class:`~.hessian.HessianOperator` other than the kept double-backward graph.

``hvp="forward_over_reverse"`` (:mod:`._forward_over_reverse`), ``hvp="finite_difference"``
(:mod:`._finite_difference`) and the choice ``hvp="auto"`` makes at the first product: double backward where
it works, else forward-over-reverse, else finite differences, with one warning saying why.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_landscape.curvature.operators._double_backward import DoubleBackward
from lightning_landscape.curvature.operators._finite_difference import FiniteDifference
from lightning_landscape.curvature.operators._forward_over_reverse import ForwardOverReverse

HvpMethod = Literal["auto", "double_backward", "forward_over_reverse", "finite_difference"]
HVP_METHODS = ("auto", "double_backward", "forward_over_reverse", "finite_difference")
# What "auto" tries, in this order, until a product succeeds.
AUTO_ORDER = ("double_backward", "forward_over_reverse", "finite_difference")


class ProductMethods:
    """Mixin of :class:`~.hessian.HessianOperator`: the products that keep no gradient graph."""

    model: nn.Module
    loss_fn: Any
    params: list[Tensor]
    param_names: list[str]
    num_params: int
    dtype: torch.dtype
    device: torch.device
    total_weight: float
    hvp: HvpMethod
    _batches: list[Any]
    _weights: list[float]
    _grads: list[Tensor | None] | None
    _products: DoubleBackward
    _fwd_warm: bool = False

    def _probe(self, index: int) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def _loss(self, index: int) -> Tensor:
        raise NotImplementedError

    def _loss_not_finite(self, loss: Tensor, index: int) -> None:
        raise NotImplementedError

    def _double_backward(self, rows: Tensor, loss_bad: bool) -> tuple[Tensor, bool]:
        raise NotImplementedError

    def _auto(self, rows: Tensor, loss_bad: bool) -> tuple[Tensor, bool]:
        """The first product of ``hvp="auto"``: the first method of double backward, forward-over-reverse
        and finite differences that works is kept for good, with one warning saying why if not the first."""
        reasons = []
        for method in AUTO_ORDER:
            try:
                if method == "double_backward":
                    hv, loss_bad = self._double_backward(rows, loss_bad)
                elif method == "forward_over_reverse":
                    hv = self._forward_over_reverse(rows)
                else:
                    hv = self._finite_difference(rows)
            except (RuntimeError, NotImplementedError) as err:
                if method == AUTO_ORDER[-1]:
                    raise
                reasons.append(f"{method}: {str(err).splitlines()[0]}")
                self._grads = None  # a double-backward graph that cannot be used again
                continue
            if reasons:
                warnings.warn(
                    f"hvp='auto' takes Hessian-vector products by {method}, since "
                    + "; ".join(reasons)
                    + f". Pass hvp={method!r} to choose it without this warning.",
                    UserWarning,
                    stacklevel=4,
                )
            self.hvp = method  # type: ignore[assignment]
            return hv, loss_bad
        raise AssertionError("unreachable")  # pragma: no cover

    def _forward_over_reverse(self, rows: Tensor) -> Tensor:
        products = ForwardOverReverse(self.model, self.loss_fn, self.param_names, self.params)
        acc = torch.zeros(rows.shape[0], self.num_params, dtype=self.dtype, device=self.device)
        for i in range(len(self._batches)):
            with self._probe(i):
                if not self._fwd_warm:
                    # A model that builds a cache on its first call (Lightning's demo Transformer builds its
                    # positional encoding lazily) would keep a tensor of a torch.func level and fail at the
                    # next: one plain forward first.
                    with torch.no_grad():
                        self._loss(i)
                acc += products(self._batches[i], rows).to(self.dtype) * self._weights[i]
        self._fwd_warm = True
        return acc / self.total_weight

    def _finite_difference(self, rows: Tensor) -> Tensor:
        return FiniteDifference(self._fd_tensors(), self._fd_split, self._gradient, self._fd_norm)(rows)

    # -- what finite differences need (the FSDP operator works on local shards instead) ----------------
    def _fd_tensors(self) -> list[Tensor]:
        """The tensors a finite difference moves in place."""
        return list(self.params)

    def _fd_split(self, row: Tensor) -> list[Tensor]:
        """A flat vector cut into pieces shaped like :meth:`_fd_tensors`."""
        return [piece[0] for piece in self._products._split(row.reshape(1, -1))]

    def _fd_norm(self, tensors: Sequence[Tensor]) -> float:
        """The 2-norm of the parameters (all of them: all ranks' shards under FSDP)."""
        return float(
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.double()) for t in tensors]))
        )

    def _gradient(self) -> Tensor:
        """The flat gradient of this process's part of the loss (batch-size weighted, over the total)."""
        acc = torch.zeros(self.num_params, dtype=self.dtype, device=self.device)
        flat = torch.empty(1, self.num_params, dtype=self.dtype, device=self.device)
        for i in range(len(self._batches)):
            with self._probe(i):
                loss = self._loss(i)
                if not bool(torch.isfinite(loss.detach())):
                    self._loss_not_finite(loss, i)
                grads = torch.autograd.grad(loss, self.params, allow_unused=True)
                acc.add_(self._products._flatten_rows(grads, flat)[0], alpha=self._weights[i])
        return acc.div_(self.total_weight)


__all__ = ["AUTO_ORDER", "HVP_METHODS", "HvpMethod", "ProductMethods"]
