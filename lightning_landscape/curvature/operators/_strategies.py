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


def reshard(model: nn.Module) -> None:
    """Put every FSDP2 module of ``model`` back on its sharded parameters (``FSDPModule.reshard``).

    A forward without gradients leaves the root module unsharded (its full parameters registered in place
    of the ``DTensor`` shards) until the next backward: a shard moved in place then reaches no forward, and
    ``parameters()`` yields the stale full copies. Every sharded evaluation starts here.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without distributed
        return
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def is_dtensor(p: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(p, DTensor)


def _check_fsdp_layout(model: nn.Module) -> None:
    """Refuse trainable parameters FSDP2 does not shard plainly over all ranks (HSDP, FSDP with tensor
    parallelism, parameters outside every ``fully_shard``-ed module)."""
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if not is_dtensor(p):
            raise ValueError(
                f"Under FSDP2 the trainable parameter {name!r} is not sharded (it lies outside every "
                "fully_shard-ed module, so FSDP does not synchronize its gradient). Apply fully_shard to "
                "the module holding it (e.g. to the root in configure_model), or freeze it."
            )
        mesh, placements = p.device_mesh, p.placements  # type: ignore[attr-defined]
        if mesh.ndim != 1 or mesh.size() != world or type(placements[0]).__name__ != "Shard":
            raise ValueError(
                f"Under FSDP2 the parameter {name!r} is laid out as {tuple(placements)} on a mesh of shape "
                f"{tuple(mesh.shape)} over {world} ranks: only plain FSDP (one Shard placement over all "
                "ranks) is supported, not HSDP or FSDP with tensor parallelism (each product would need "
                "the layers' own collectives). Shard with fully_shard over all ranks, or use DDP."
            )


def refuse_under_fsdp(hvp: str, backend: str = "lanczos") -> None:
    """Raise for the options that cannot run on FSDP2-sharded parameters, naming the way out.

    Raises:
        ValueError: for ``backend="pyhessian"`` or an ``hvp`` other than ``"auto"``/``"finite_difference"``.

    Example:
        >>> refuse_under_fsdp("finite_difference")  # fine
    """
    if backend == "pyhessian":
        raise ValueError(
            "`backend`='pyhessian' cannot run under FSDP: it differentiates twice through "
            "torch.autograd.grad, which has no graph w.r.t. sharded parameters. Use backend='lanczos' (or "
            "'power'): their products are finite differences of the sharded gradients."
        )
    if hvp not in ("auto", "finite_difference"):
        raise ValueError(
            f"`hvp`={hvp!r} cannot run under FSDP: torch.autograd.grad w.r.t. sharded parameters has no "
            "graph to differentiate twice (or forward through). Use hvp='finite_difference' (or 'auto', "
            "which picks it)."
        )


def refuse_unsupported(model: nn.Module, hvp: str) -> None:
    """Raise for strategies the operator cannot take, saying why and what to use instead.

    Under FSDP2 the model is first :func:`reshard`-ed, so that ``parameters()`` yields the sharded ones.

    Raises:
        ValueError: for DeepSpeed-partitioned parameters, tensor-parallel (non-FSDP) ``DTensor`` parameters,
            or under FSDP2 an ``hvp`` other than ``"auto"``/``"finite_difference"``, a trainable parameter
            outside every ``fully_shard``-ed module, or a layout other than one ``Shard`` over all ranks
            (HSDP, FSDP with tensor parallelism).
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
        reshard(model)  # a no-grad forward may have left it unsharded: select the sharded parameters
        refuse_under_fsdp(hvp)
        _check_fsdp_layout(model)
        return
    if any(is_dtensor(p) for p in params):
        raise ValueError(
            "DTensor parameters outside FSDP (tensor parallelism) are not supported: a product would need "
            "each layer's own collectives. Use FSDP2 (fully_shard, finite-difference products) or DDP."
        )


__all__ = ["is_dtensor", "refuse_under_fsdp", "refuse_unsupported", "reshard", "wants_fsdp"]
