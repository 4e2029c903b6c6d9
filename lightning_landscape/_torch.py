"""Every private torch member the package needs, in one place, each with a test (tests/test__torch.py).

A torch upgrade that renames one of these breaks here, not in twelve modules. Nothing else in the package
touches a ``torch._*`` name, ``nn.modules.*._Foo`` base class or ``module._buffers``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree

#: Base class of the BatchNorm layers (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, lazy variants).
BatchNormBase = nn.modules.batchnorm._BatchNorm
#: Base class of BatchNorm and InstanceNorm (layers that may track running statistics).
NormBase = nn.modules.batchnorm._NormBase
#: Base class of ``Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``, ``FeatureAlphaDropout``.
DropoutBase = nn.modules.dropout._DropoutNd

tree_leaves: Callable[[Any], list[Any]] = _pytree.tree_leaves
tree_map: Callable[..., Any] = _pytree.tree_map


def named_buffer_slots(module: nn.Module) -> Iterator[tuple[str, Tensor | None]]:
    """``(name, buffer)`` of ``module``'s own buffer slots (not its children's), ``None`` entries included."""
    yield from list(module._buffers.items())


def set_buffer(module: nn.Module, name: str, tensor: Tensor | None) -> None:
    """Replace buffer ``name`` of ``module`` by ``tensor`` without the checks of ``register_buffer``
    (the slot keeps its persistence flag)."""
    module._buffers[name] = tensor


def set_parameter(module: nn.Module, name: str, param: nn.Parameter) -> None:
    """Replace parameter ``name`` of ``module`` by ``param`` without the checks of ``register_parameter``."""
    module._parameters[name] = param


def foreach_norm(tensors: list[Tensor], ord: float) -> list[Tensor]:
    """The ``ord``-norm of each tensor, fused in one kernel where torch has one."""
    return list(torch._foreach_norm(tensors, ord))


def is_compiled_wrapper(module: nn.Module) -> bool:
    """True for the ``OptimizedModule`` that ``torch.compile(module)`` returns (it holds ``_orig_mod``)."""
    return hasattr(module, "_orig_mod")


#: The prefix ``torch.compile`` adds to the parameter names of a compiled submodule.
COMPILED_PREFIX = "_orig_mod."


#: True for a tensor seen inside ``vmap`` (a functorch BatchedTensor); ``None`` where torch lacks the test.
is_batched_tensor: Callable[[Tensor], bool] | None = getattr(torch._C._functorch, "is_batchedtensor", None)


def version_counter(tensor: Tensor) -> int:
    """``tensor``'s version counter: it changes whenever the tensor is modified in place."""
    return int(tensor._version)


def dynamo_supported() -> bool:
    """Whether ``torch.compile`` can run on this Python/platform."""
    return bool(torch._dynamo.is_dynamo_supported())


def has_triton() -> bool:
    """Whether the ``triton`` package (inductor's CUDA backend) is usable."""
    from torch.utils._triton import has_triton as _has_triton

    return bool(_has_triton())


def functorch_config() -> Any:
    """``torch._functorch.config`` (the AOT autograd partitioner's settings)."""
    import torch._functorch.config as config

    return config


def fresh_iterator(dataloader: Any) -> Any:
    """A new iterator over a ``DataLoader`` that shares nothing with the training loop's iterator.

    ``iter(dataloader)`` hands out (and later resets) the cached iterator of a loader with
    ``persistent_workers=True``; the private ``_get_iterator`` always builds a fresh one.
    """
    get_iterator = getattr(dataloader, "_get_iterator", None)
    return get_iterator() if callable(get_iterator) else iter(dataloader)


def shutdown_workers(iterator: Any) -> None:
    """Stop the worker processes of a ``DataLoader`` iterator (a no-op for single-process iterators)."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()


def tensorboard_file_writer(writer: Any) -> Any:
    """The ``FileWriter`` behind a ``torch.utils.tensorboard.SummaryWriter`` (to add raw summaries)."""
    return writer._get_file_writer()
