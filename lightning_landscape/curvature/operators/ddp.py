r"""The Hessian operator under ``torch.distributed``: each rank its own batches, every product all-reduced.

With batches :math:`B^{(r)}_i` on rank :math:`r`, every rank gets the product of the global Hessian

.. math::

    Hv = \frac{\sum_r \sum_i |B^{(r)}_i| \, H^{(r)}_i v}{\sum_r \sum_i |B^{(r)}_i|},

one ``all_reduce`` (default process group) per product or block of products. A non-finite loss on one rank
must not leave the others waiting in a collective: it is flagged in the same reduction and every rank raises
:class:`~.hessian.NonFiniteError` together.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_landscape.curvature.operators.hessian import HessianOperator, NonFiniteError


class DDPHessianOperator(HessianOperator):
    """A :class:`~.hessian.HessianOperator` whose products are all-reduced across ranks.

    ``HessianOperator(...)`` returns one under an initialized process group (unless ``distributed=False``),
    or with ``distributed=True``; its arguments are those of :class:`~.hessian.HessianOperator`. Every rank
    must construct it and ask for the same products in the same order (the collectives pair up).
    """

    distributed = True

    def _total_weight(self, local: float) -> float:
        # gloo reduces CPU tensors, nccl CUDA ones: follow the parameters.
        total = torch.tensor([local], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(total)
        return float(total.item())

    def _loss_not_finite(self, loss: Tensor, index: int) -> None:
        # Raised in the next product's all-reduce, so that no rank waits forever.
        return None

    def _reduce(self, hv: Tensor, loss_bad: bool) -> Tensor:
        j = hv.shape[0]
        flag = torch.tensor([1.0 if loss_bad else 0.0], dtype=self.dtype, device=self.device)
        packed = torch.cat([hv.reshape(-1), flag])
        torch.distributed.all_reduce(packed)
        hv, bad = packed[:-1].reshape(j, self.num_params), float(packed[-1].item())
        if bad > 0:
            where = "on this rank" if loss_bad else "on another rank"
            raise NonFiniteError(f"The loss is not finite {where} (Hessian-vector product aborted).")
        return hv


__all__ = ["DDPHessianOperator"]
