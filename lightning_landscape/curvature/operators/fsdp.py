r"""The Hessian operator under FSDP2 (``fully_shard``): finite differences of sharded gradients.

Each rank passes its own batches. A product moves every rank's local shard of the parameters by
:math:`\pm h v` (``v`` is replicated: every rank holds the whole flat vector and cuts out its shard),
runs ``backward()`` on its batches (FSDP all-gathers the parameters and reduce-scatters the gradients, a
mean over ranks), and gathers the full gradient (``DTensor.full_tensor``):

.. math::

    Hv \approx \frac{\nabla L(\theta + h v) - \nabla L(\theta - h v)}{2 h}, \qquad
    L = \frac{\sum_r \sum_i |B^{(r)}_i| \, \ell(\theta; B^{(r)}_i)}{\sum_r \sum_i |B^{(r)}_i|},

each rank scaling its loss by the world size so that FSDP's mean over ranks is this weighted mean. The
parameters are sharded; the Krylov vectors are not (each rank holds full parameter-sized vectors and runs
the same algorithm on the same numbers). ``.grad`` is saved and put back as found.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_landscape.curvature.operators._methods import HvpMethod
from lightning_landscape.curvature.operators.hessian import HessianOperator


class FSDPHessianOperator(HessianOperator):
    """A :class:`~.hessian.HessianOperator` over ``fully_shard``-ed parameters (finite differences only).

    ``HessianOperator(...)`` returns one when the model holds an FSDP2 module; its arguments are those of
    :class:`~.hessian.HessianOperator` (``hvp`` must be ``"auto"`` or ``"finite_difference"``). Every rank
    must construct it and ask for the same products in the same order (the collectives pair up).
    """

    distributed = True

    def _default_hvp(self, hvp: HvpMethod) -> HvpMethod:
        return "finite_difference"

    def _total_weight(self, local: float) -> float:
        total = torch.tensor([local], dtype=torch.float64, device=self._local(self.params[0]).device)
        torch.distributed.all_reduce(total)
        return float(total.item())

    @staticmethod
    def _local(p: Tensor) -> Tensor:
        to_local = getattr(p, "to_local", None)
        return to_local() if to_local is not None else p

    def _fd_tensors(self) -> list[Tensor]:
        return [self._local(p) for p in self.params]

    def _fd_split(self, row: Tensor) -> list[Tensor]:
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        out, offset = [], 0
        for p in self.params:
            full = row[offset : offset + p.numel()].reshape(p.shape)
            offset += p.numel()
            # FSDP2 shards dim 0 like torch.chunk (Shard(0)); an empty shard on the last ranks is fine.
            chunks = torch.chunk(full, world, dim=0) if full.dim() > 0 else (full,) * world
            local = self._local(p)
            piece = chunks[rank] if rank < len(chunks) else full.new_zeros(local.shape)
            out.append(piece.reshape(local.shape))
        return out

    def _fd_norm(self, tensors: Sequence[Tensor]) -> float:
        local = sum((float(torch.linalg.vector_norm(t.double())) ** 2 for t in tensors), 0.0)
        total = torch.tensor([local], dtype=torch.float64, device=tensors[0].device)
        torch.distributed.all_reduce(total)
        return float(total.item()) ** 0.5

    def _gradient(self) -> Tensor:
        everything = list(self.model.parameters())
        saved = [p.grad for p in everything]
        scale = torch.distributed.get_world_size() / self.total_weight
        try:
            for p in everything:
                p.grad = None
            bad = False
            for i in range(len(self._batches)):
                with self._probe(i):
                    loss = self._loss(i)
                    bad |= not bool(torch.isfinite(loss.detach()))
                    (loss * (self._weights[i] * scale)).backward()
            flat = []
            for q in self.params:
                g: Tensor | None = q.grad
                if g is None:
                    flat.append(torch.zeros(q.numel(), dtype=self.dtype, device=self.device))
                else:
                    full = g.full_tensor() if hasattr(g, "full_tensor") else g
                    flat.append(full.reshape(-1).to(self.dtype))
            grad = torch.cat(flat)
        finally:
            for p, g in zip(everything, saved, strict=True):
                p.grad = g
        flag = torch.tensor([1.0 if bad else 0.0], dtype=torch.float64, device=grad.device)
        torch.distributed.all_reduce(flag)
        if float(flag.item()) > 0:
            from lightning_landscape.curvature.operators.hessian import NonFiniteError

            raise NonFiniteError("The loss is not finite on some rank (Hessian-vector product aborted).")
        return grad


__all__ = ["FSDPHessianOperator"]
