"""Leave a model exactly as found: snapshots of its state, train/eval restore, buffers, RNG, attention kernel.

The one place every probe of the package (Hessian operator, landscape grid, risk gap, pyhessian wrapper)
takes its "nothing left behind" guarantees from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from lightning_landscape._torch import named_buffer_slots, set_buffer


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Scaled-dot-product attention on its math kernel inside the block: the one guard of every path
    that differentiates twice."""
    # Fused SDPA kernels (flash / memory-efficient, CPU and CUDA) have no double backward; the math
    # kernel is plain differentiable ops, so Hessian-vector products always run under it.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


class ModelState:
    """A snapshot of everything a probe could change on a model, restorable exactly.

    Covers train/eval flags of every submodule, ``requires_grad`` flags, parameter values, ``.grad``
    fields (the tensor objects themselves, including ``None``, and their values) and the global torch
    RNG states (CPU and every CUDA device the parameters live on).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes = [(m, m.training) for m in model.modules()]
        params = list(model.parameters())
        self.requires_grad = [(p, p.requires_grad) for p in params]
        self.grads = [(p, p.grad, None if p.grad is None else p.grad.detach().clone()) for p in params]
        self.values = [(p, p.detach().clone()) for p in params]

    def restore_modes(self) -> None:
        for module, training in self.modes:
            module.training = training

    def restore(self) -> None:
        self.restore_modes()
        with torch.no_grad():
            for p, value in self.values:
                if not torch.equal(p, value):
                    p.copy_(value)
            for p, grad, grad_value in self.grads:
                p.grad = grad
                if grad is not None and grad_value is not None and not torch.equal(grad, grad_value):
                    grad.copy_(grad_value)
        for p, flag in self.requires_grad:
            p.requires_grad_(flag)


@contextlib.contextmanager
def kept_modes(model: nn.Module, train_mode: bool = False) -> Iterator[None]:
    """``model`` in eval mode inside the block (its own flags with ``train_mode``), every submodule's own
    train/eval flag restored afterwards: the one train/eval restore of every probe in the package."""
    modes = [(m, m.training) for m in model.modules()]
    if not train_mode:
        model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def probe_context(model: nn.Module, train_mode: bool = False, grad: bool = True) -> Iterator[None]:
    """Evaluate ``model`` with nothing left behind: the global RNG forked, buffers swapped for copies, eval
    mode unless ``train_mode`` (flags restored), gradients on or off as ``grad`` says."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=rng_devices(model)))
        stack.enter_context(swapped_buffers(model))
        stack.enter_context(torch.enable_grad() if grad else torch.no_grad())
        stack.enter_context(kept_modes(model, train_mode))
        yield


def rng_devices(model: nn.Module) -> list[int]:
    """CUDA device indices of the model's parameters, for :func:`torch.random.fork_rng`."""
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


@contextlib.contextmanager
def swapped_buffers(model: nn.Module) -> Iterator[None]:
    """Run with every buffer replaced by a copy, then put the originals back.

    A forward in train mode updates BatchNorm running statistics in place; the copies absorb that while
    the originals stay untouched (and copies referenced by a kept autograd graph are never modified).
    """
    saved: list[tuple[nn.Module, str, Tensor]] = []
    for module in model.modules():
        for name, buf in named_buffer_slots(module):
            if buf is not None:
                saved.append((module, name, buf))
                set_buffer(module, name, buf.clone())
    try:
        yield
    finally:
        for module, name, buf in saved:
            set_buffer(module, name, buf)
