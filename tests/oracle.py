"""THE dense float64 Hessian oracle of the test suite: plain autograd double backward, nothing else.

For a model, ``loss_fn(model, batch)`` and fixed batches, :func:`dense_hessian` returns the Hessian of the
batch-size-weighted mean loss

.. math::

    L(\\theta) = \\frac{\\sum_i |B_i| \\, \\ell(\\theta; B_i)}{\\sum_i |B_i|}

with respect to the trainable parameters (or a named subset: a block of the full Hessian), in float64, in eval
mode unless ``train_mode``, autocast off, with the math SDPA kernel. It substitutes float64 leaf tensors for
the parameters (and float64 copies for the buffers, so train-mode BatchNorm statistics stay untouched), takes
the gradient with ``create_graph=True`` and differentiates each of its ``n`` entries once more: no
``torch.func`` (whose ``hessian`` is wrong and asymmetric through ``F.layer_norm`` in torch 2.13), no code of
the package. ``loss_fn`` may call anything on the module (``training_step`` included), since the parameters
are swapped in place for the call.

Frozen parameters (``requires_grad=False``) are constants; parameters the loss does not use have zero rows;
a parameter shared by several modules (tied weights) is one variable, substituted in every module using it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import stateless

DTYPE = torch.float64
LossFn = Callable[[nn.Module, Any], Tensor]


def batch_size(batch: Any) -> int:
    """Leading dimension of the first tensor of ``batch`` (depth first), 1 for a 0-d tensor."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else 1
    items: Iterable[Any] = batch.values() if isinstance(batch, Mapping) else batch
    for item in items:
        if isinstance(item, (Tensor, Mapping, list, tuple)):
            return batch_size(item)
    raise TypeError(f"no tensor in batch of type {type(batch).__name__}")


def to_double(batch: Any) -> Any:
    """``batch`` with every floating tensor in float64 (integer tensors, e.g. tokens, unchanged)."""
    if isinstance(batch, Tensor):
        return batch.to(DTYPE) if batch.is_floating_point() else batch
    if isinstance(batch, Mapping):
        return {k: to_double(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_double(v) for v in batch)
    return batch


def parameter_names(model: nn.Module, names: Sequence[str] | None = None) -> list[str]:
    """The trainable parameters' names in ``named_parameters`` order (``names``: only those, same order)."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if names is None:
        return trainable
    missing = sorted(set(names) - set(trainable))
    if missing:
        raise KeyError(f"not trainable parameters of the model: {missing}")
    return [n for n in trainable if n in set(names)]


def dense_hessian(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    *,
    train_mode: bool = False,
    names: Sequence[str] | None = None,
) -> Tensor:
    """The ``n x n`` float64 Hessian of the mean loss w.r.t. the trainable parameters (or ``names``).

    The rows follow ``named_parameters`` order, each parameter flattened. The model is left exactly as found
    (values, dtypes, modes, ``.grad``).
    """
    wanted = parameter_names(model, names)
    params = dict(model.named_parameters())
    flat = torch.cat([params[n].detach().to(DTYPE).reshape(-1) for n in wanted]).requires_grad_(True)
    sizes = torch.tensor([float(batch_size(b)) for b in batches], dtype=DTYPE)
    weights = sizes / sizes.sum()
    modes = [(m, m.training) for m in model.modules()]
    constants = {n: p.detach().to(DTYPE) for n, p in params.items() if n not in set(wanted)}
    try:
        if not train_mode:
            model.eval()
        chunks, offset = {}, 0
        for n in wanted:
            size = params[n].numel()
            chunks[n] = flat[offset : offset + size].view(params[n].shape)
            offset += size
        loss = flat.new_zeros(())
        with sdpa_kernel(SDPBackend.MATH), torch.autocast("cpu", enabled=False):
            for w, batch in zip(weights, batches, strict=True):
                # Copies (float64 where floating) absorb what a train-mode BatchNorm writes into its buffers.
                buffers = {n: to_double(b.detach()).clone() for n, b in model.named_buffers()}
                # tie_weights: a tied parameter (GPT-2's embedding and LM head) is one variable in every use.
                mapping = {**constants, **chunks, **buffers}
                with stateless._reparametrize_module(model, mapping, tie_weights=True):
                    loss = loss + w * loss_fn(model, to_double(batch)).to(DTYPE)
        (grad,) = torch.autograd.grad(loss, flat, create_graph=True)
        rows = []
        for i in range(flat.numel()):
            if grad[i].requires_grad:
                (row,) = torch.autograd.grad(grad[i], flat, retain_graph=True, allow_unused=True)
                rows.append(torch.zeros_like(flat) if row is None else row)
            else:
                rows.append(torch.zeros_like(flat))
        return torch.stack(rows).detach()
    finally:
        for m, training in modes:
            m.training = training


def dense_eigenvalues(model: nn.Module, loss_fn: LossFn, batches: Sequence[Any], **kwargs: Any) -> Tensor:
    """Ascending float64 eigenvalues of :func:`dense_hessian`."""
    return torch.linalg.eigvalsh(dense_hessian(model, loss_fn, batches, **kwargs))
