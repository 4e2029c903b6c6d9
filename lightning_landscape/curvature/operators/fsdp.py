r"""The Hessian operator under FSDP2 (``fully_shard``): finite differences of sharded gradients.

Each rank passes its own batches (every rank the same number: each forward all-gathers, so the ranks must
run the same forwards). A product moves every rank's local shard of the parameters by :math:`\pm h v`
(``v`` is replicated: every rank holds the whole flat vector and cuts out its shard), runs ``backward()`` on
its batches (FSDP all-gathers the parameters and reduce-scatters the gradients, a mean over ranks), and
gathers the full gradient (``DTensor.full_tensor``):

.. math::

    Hv \approx \frac{\nabla L(\theta + h v) - \nabla L(\theta - h v)}{2 h}, \qquad
    L = \frac{\sum_r \sum_i |B^{(r)}_i| \, \ell(\theta; B^{(r)}_i)}{\sum_r \sum_i |B^{(r)}_i|},

each rank scaling its loss by the world size so that FSDP's mean over ranks is this weighted mean. The
parameters are sharded; the Krylov vectors are not (each rank holds full parameter-sized vectors and runs
the same algorithm on the same numbers: the gathered gradients are bit-identical on every rank).
:meth:`FSDPHessianOperator.local_matvec` with :meth:`~FSDPHessianOperator.localize`,
:meth:`~FSDPHessianOperator.gather` and :meth:`~FSDPHessianOperator.reduce` take products on vectors held
as shards only, what a sharded Krylov basis needs (the algorithms do not use them yet).
:meth:`FSDPHessianOperator.line_derivatives` gives the slope and curvature along a direction held as local
shards only (what the loss lines under FSDP use). ``.grad`` is saved and put back as found.

Layout: every selected parameter is a ``DTensor`` of one ``Shard(dim)`` placement on a one-dimensional mesh
of all ranks (``fully_shard``'s default; :func:`~._strategies.refuse_unsupported` refuses anything else).
Shards follow ``torch.chunk`` along ``dim``, as FSDP2 cuts them (the last ranks may hold empty shards).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_landscape.curvature.operators._finite_difference import step_size
from lightning_landscape.curvature.operators._methods import HvpMethod
from lightning_landscape.curvature.operators._strategies import reshard
from lightning_landscape.curvature.operators.hessian import HessianOperator, NonFiniteError


def local_tensor(p: Tensor) -> Tensor:
    """The part of ``p`` this rank holds (``DTensor.to_local``; a plain tensor is its own)."""
    to_local = getattr(p, "to_local", None)
    return to_local() if to_local is not None else p


def shard_range(p: Tensor) -> tuple[int, int, int] | None:
    """``(dim, start, length)`` of this rank's shard of the ``DTensor`` ``p``; ``None`` for a plain tensor.

    Example:
        >>> shard_range(torch.zeros(3)) is None
        True
    """
    placements = getattr(p, "placements", None)
    if placements is None:
        return None
    dim = int(placements[0].dim)
    mesh = p.device_mesh  # type: ignore[attr-defined]
    world, rank = mesh.size(), mesh.get_local_rank()
    size = p.shape[dim]
    chunk = -(-size // world) if size else 0
    start = min(rank * chunk, size)
    return dim, start, int(local_tensor(p).shape[dim])


def shard_of(full: Tensor, p: Tensor) -> Tensor:
    """The piece of ``full`` (shaped like ``p``) that this rank holds of the parameter ``p``.

    Example:
        >>> shard_of(torch.arange(4.0), torch.zeros(4)).tolist()  # a plain tensor: all of it
        [0.0, 1.0, 2.0, 3.0]
    """
    where = shard_range(p)
    if where is None:
        return full.reshape(p.shape)
    dim, start, length = where
    return full.reshape(p.shape).narrow(dim, start, length)


def all_reduce_sum(values: Tensor) -> Tensor:
    """``values`` summed over all ranks (float64, on the tensor's device; gloo reduces CPU tensors, nccl
    CUDA ones)."""
    values = values.to(torch.float64)
    torch.distributed.all_reduce(values)
    return values


class FSDPHessianOperator(HessianOperator):
    """A :class:`~.hessian.HessianOperator` over ``fully_shard``-ed parameters (finite differences only).

    ``HessianOperator(...)`` returns one when the model holds an FSDP2 module; its arguments are those of
    :class:`~.hessian.HessianOperator` (``hvp`` must be ``"auto"`` or ``"finite_difference"``; ``memory``
    and ``batched`` change nothing here). Every rank must construct it with the same number of batches and
    ask for the same products in the same order (the collectives pair up).

    Raises:
        ValueError: as :class:`~.hessian.HessianOperator`, and if the ranks hold different numbers of batches.
    """

    distributed = True

    def _default_hvp(self, hvp: HvpMethod) -> HvpMethod:
        return "finite_difference"

    def _total_weight(self, local: float) -> float:
        device = local_tensor(self.params[0]).device
        count = float(len(self._batches))
        # One reduction: the total weight, and the largest and smallest batch count (as max of +-count).
        packed = torch.tensor([local, count, -count], dtype=torch.float64, device=device)
        total = packed[:1].clone()
        torch.distributed.all_reduce(total)
        spread = packed[1:].clone()
        torch.distributed.all_reduce(spread, op=torch.distributed.ReduceOp.MAX)
        most, fewest = int(spread[0].item()), int(-spread[1].item())
        if most != fewest:
            raise ValueError(
                f"Under FSDP every rank must pass the same number of batches (each forward all-gathers the "
                f"parameters, so the ranks run their forwards together); they pass {fewest} to {most}. "
                "Give every rank as many batches (a DistributedSampler does)."
            )
        return float(total.item())

    def _fd_tensors(self) -> list[Tensor]:
        return [local_tensor(p) for p in self.params]

    def _fd_split(self, row: Tensor) -> list[Tensor]:
        out, offset = [], 0
        for p in self.params:
            out.append(shard_of(row[offset : offset + p.numel()], p))
            offset += p.numel()
        return out

    def _fd_norm(self, tensors: Sequence[Tensor]) -> float:
        return global_norm(tensors)

    def _sharded_gradient(self) -> list[Tensor]:
        """The gradient of the operator's loss at the current values, one ``DTensor`` per selected parameter
        (sharded like it), from one ``backward()`` per batch.

        Raises:
            NonFiniteError: on every rank together, if the loss is not finite on some rank.
        """
        reshard(self.model)  # else a forward may reuse full parameters gathered before a shard moved
        everything = list(self.model.parameters())
        saved = [p.grad for p in everything]
        scale = torch.distributed.get_world_size() / self.total_weight
        bad = False
        try:
            for p in everything:
                p.grad = None
            for i in range(len(self._batches)):
                with self._probe(i):
                    loss = self._loss(i)
                    bad |= not bool(torch.isfinite(loss.detach()))
                    (loss * (self._weights[i] * scale)).backward()
            grads = [q.grad if q.grad is not None else torch.zeros_like(q) for q in self.params]
        finally:
            for p, g in zip(everything, saved, strict=True):
                p.grad = g
        flag = torch.tensor([1.0 if bad else 0.0], dtype=torch.float64, device=self._fd_tensors()[0].device)
        if float(all_reduce_sum(flag).item()) > 0:
            raise NonFiniteError("The loss is not finite on some rank (Hessian-vector product aborted).")
        return grads

    def _gradient(self) -> Tensor:
        flat = []
        for g in self._sharded_gradient():
            full = g.full_tensor() if hasattr(g, "full_tensor") else g
            flat.append(full.reshape(-1).to(self.dtype))
        return torch.cat(flat)

    def _moved_gradients(self, pieces: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], float] | None:
        r"""The sharded gradients at :math:`\theta \pm h d` for ``d`` given as this rank's shards, and ``h``
        (the step of the products); ``None`` for a zero or non-finite ``d``."""
        locals_ = self._fd_tensors()
        if len(pieces) != len(locals_) or any(
            d.shape != t.shape for d, t in zip(pieces, locals_, strict=False)
        ):
            raise ValueError("the vector must hold this rank's shard of every selected parameter, in order.")
        d_norm = global_norm(pieces)
        if d_norm == 0.0 or not math.isfinite(d_norm):
            return None
        saved = [t.detach().clone() for t in locals_]
        h = step_size(global_norm(saved), d_norm, saved[0].dtype)
        grads = []
        try:
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for t, s, d in zip(locals_, saved, pieces, strict=True):
                        t.copy_(s).add_(d.to(t.dtype), alpha=sign * h)
                grads.append(self._sharded_gradient())
        finally:
            with torch.no_grad():
                for t, s in zip(locals_, saved, strict=True):
                    t.copy_(s)
        return grads[0], grads[1], h

    def line_derivatives(self, direction: Sequence[Tensor]) -> tuple[float, float]:
        r"""The slope :math:`g^\top d` and curvature :math:`d^\top H d` along ``d``, given as this rank's
        shards only (shaped like ``to_local()`` of each selected parameter).

        The slope from the gradient at :math:`\theta`, the curvature from the central difference of the
        directional derivative, :math:`(\nabla L(\theta + h d) - \nabla L(\theta - h d))^\top d / 2h` with
        the step of the products: three gradients, dot products all-reduced, no parameter-sized vector
        gathered. Counts as one product in :attr:`num_products`.

        Raises:
            ValueError: if ``direction`` does not hold one shard per selected parameter.
            NonFiniteError: if the loss is not finite on some rank.
        """
        pieces = list(direction)
        slope = _dot(self._sharded_gradient(), pieces)
        moved = self._moved_gradients(pieces)
        if moved is None:
            return slope, 0.0 if global_norm(pieces) == 0.0 else math.nan
        plus, minus, h = moved
        self.num_products += 1
        return slope, (_dot(plus, pieces) - _dot(minus, pieces)) / (2.0 * h)

    # -- vectors held as shards: what a sharded Krylov basis needs -------------------------------------
    @property
    def local_size(self) -> int:
        """Entries of this rank's part of a flat vector: its shards of the selected parameters, in order."""
        return sum(local_tensor(p).numel() for p in self.params)

    def localize(self, v: Tensor) -> Tensor:
        """This rank's part (:attr:`local_size` entries) of a full flat vector ``v`` (``num_params``)."""
        return torch.cat([t.reshape(-1) for t in self._fd_split(v.reshape(-1))])

    def gather(self, local: Tensor) -> Tensor:
        """The full flat vector from every rank's part (the inverse of :meth:`localize`; a collective)."""
        from torch.distributed.tensor import DTensor

        out, offset = [], 0
        for p in self.params:
            shard = local_tensor(p)
            piece = local[offset : offset + shard.numel()].reshape(shard.shape)
            offset += shard.numel()
            mesh, placements = p.device_mesh, p.placements  # type: ignore[attr-defined]
            full = DTensor.from_local(
                piece, mesh, placements, run_check=False, shape=p.shape, stride=p.stride()
            )
            out.append(full.full_tensor().reshape(-1))
        return torch.cat(out)

    @staticmethod
    def reduce(partial: Tensor) -> Tensor:
        """``partial`` (sums over this rank's entries: dot products, squared norms, projections onto a
        basis) summed over all ranks, in its dtype (a collective)."""
        total = partial.detach().clone()
        torch.distributed.all_reduce(total)
        return total

    def local_matvec(self, v: Tensor) -> Tensor:
        """:math:`Hv` with ``v`` and the product held as this rank's parts (:attr:`local_size` entries): no
        parameter-sized vector is gathered or held whole. Equal to ``localize(matvec(gather(v)))`` up to
        rounding; one product in :attr:`num_products`.

        Raises:
            ValueError: if ``v`` does not have :attr:`local_size` entries.
            NonFiniteError: if the loss or the product is not finite on some rank.
        """
        if v.numel() != self.local_size:
            raise ValueError(f"`v` must have local_size={self.local_size} entries, got {v.numel()}.")
        pieces, offset = [], 0
        for t in self._fd_tensors():
            pieces.append(v[offset : offset + t.numel()].reshape(t.shape).to(device=t.device, dtype=t.dtype))
            offset += t.numel()
        moved = self._moved_gradients(pieces)
        self.num_products += 1
        if moved is None:
            fill = 0.0 if global_norm(pieces) == 0.0 else math.nan
            return torch.full((self.local_size,), fill, dtype=self.dtype, device=v.device)
        plus, minus, h = moved
        hv = torch.cat(
            [(local_tensor(a) - local_tensor(b)).reshape(-1) for a, b in zip(plus, minus, strict=True)]
        )
        hv = (hv / (2.0 * h)).to(self.dtype)
        bad = torch.tensor(
            [0.0 if bool(torch.isfinite(hv).all()) else 1.0], dtype=torch.float64, device=hv.device
        )
        if float(all_reduce_sum(bad).item()) > 0:
            raise NonFiniteError("The Hessian-vector product is not finite on some rank.")
        return hv


def global_norm(pieces: Sequence[Tensor]) -> float:
    """The 2-norm of a vector held as shards on all ranks (the local sums of squares all-reduced)."""
    local = sum((float(torch.linalg.vector_norm(t.double())) ** 2 for t in pieces), 0.0)
    total = torch.tensor([local], dtype=torch.float64, device=pieces[0].device)
    return float(all_reduce_sum(total).item()) ** 0.5


def _dot(grads: Sequence[Tensor], pieces: Sequence[Tensor]) -> float:
    """:math:`g^\\top d` over all ranks, ``g`` sharded gradients and ``d`` this rank's shards."""
    local = sum(
        (float((local_tensor(g).double() * d.double()).sum()) for g, d in zip(grads, pieces, strict=True)),
        0.0,
    )
    total = torch.tensor([local], dtype=torch.float64, device=pieces[0].device)
    return float(all_reduce_sum(total).item())


__all__ = ["FSDPHessianOperator", "all_reduce_sum", "global_norm", "local_tensor", "shard_of", "shard_range"]
