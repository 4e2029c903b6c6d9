"""Which parallel strategies the Hessian operator takes, decided once from the model.

* FSDP2 (``torch.distributed.fsdp.fully_shard``, as Lightning's ``ModelParallelStrategy`` applies it): the
  parameters are sharded ``DTensor``\\ s; ``torch.autograd.grad`` with respect to them has no graph, while
  ``backward()`` fills sharded gradients, so products are finite differences of gradients
  (:class:`~.fsdp.FSDPHessianOperator`).
* DeepSpeed (ZeRO partitions parameters behind its own engine) and tensor parallelism (``DTensor``
  parameters outside FSDP: every product would need the layer's own collectives) are refused by name.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def wants_fsdp(model: Any) -> bool:
    """Whether ``model`` (or a submodule) was sharded by FSDP2's ``fully_shard``."""
    if not isinstance(model, nn.Module):
        return False
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())


def _is_dtensor(p: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(p, DTensor)


def refuse_unsupported(model: nn.Module, hvp: str) -> None:
    """Raise for strategies the operator cannot take, saying why and what to use instead.

    Raises:
        ValueError: for DeepSpeed-partitioned parameters, tensor-parallel (non-FSDP) ``DTensor`` parameters,
            or under FSDP2 an ``hvp`` other than ``"auto"``/``"finite_difference"``.
    """
    params = list(model.parameters())
    if any(hasattr(p, "ds_id") or hasattr(p, "ds_status") for p in params):
        raise ValueError(
            "DeepSpeed-partitioned parameters are not supported: ZeRO gathers them only inside its own "
            "engine, so no Hessian-vector product can see them. Use FSDP2 (Lightning's "
            "ModelParallelStrategy / torch.distributed.fsdp.fully_shard, products by finite differences) "
            "or DDP, or probe an unpartitioned copy of the model."
        )
    if wants_fsdp(model):
        if hvp not in ("auto", "finite_difference"):
            raise ValueError(
                f"`hvp`={hvp!r} is not possible under FSDP: torch.autograd.grad with respect to sharded "
                "parameters has no graph to differentiate twice (or forward through). Use "
                "hvp='finite_difference' (or 'auto', which picks it)."
            )
        return
    if any(_is_dtensor(p) for p in params):
        raise ValueError(
            "DTensor parameters outside FSDP (tensor parallelism) are not supported: a product would need "
            "each layer's own collectives. Use FSDP2 (fully_shard, finite-difference products) or DDP."
        )


__all__ = ["refuse_unsupported", "wants_fsdp"]
