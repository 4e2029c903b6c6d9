"""pyhessian 0.1's power iteration behind :func:`hessian_eigenvalues`, with its side effects undone.

pyhessian wants a model called on inputs, a ``criterion(outputs, targets)`` and either one
``(inputs, targets)`` batch (it then keeps the gradient graph) or a loader of them (recomputed per
product, weighted by ``inputs.size(0)``). We adapt any ``loss_fn(model, batch)`` with a wrapper module
whose input is a tensor of batch indices as long as the batch (so pyhessian's weighting is by batch
size) and whose output is the loss itself; the criterion returns it unchanged.

Undone afterwards: ``model.eval()`` (modes restored), ``.grad`` filled with graph-holding tensors (objects
and values restored), the global RNG (pyhessian draws its start vectors from it: forked and seeded with
``seed``), the default dtype (set to the parameters' so its vectors match float64 models), and the
``cuda`` assumption (set from the parameters' device).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from lightning_landscape.curvature._inputs import LossFn, batch_size
from lightning_landscape.curvature._model_state import (
    ModelState,
    math_attention,
    rng_devices,
    swapped_buffers,
)
from lightning_landscape.curvature.operators.hessian import HessianOperator, NonFiniteError
from lightning_landscape.curvature.operators.inputs import OperatorInputs
from lightning_landscape.curvature.results import EigenResult


class _LossModule(nn.Module):
    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: list[Any], train_mode: bool) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.batches = batches
        self.train_mode = train_mode
        self.modes = [(m, m.training) for m in model.modules()]

    def forward(self, index: Tensor) -> Tensor:
        # pyhessian calls eval() on us: impose the mode the caller asked for, per evaluation.
        for module, training in self.modes:
            module.training = training if self.train_mode else False
        with swapped_buffers(self.model), math_attention():
            loss = self.loss_fn(self.model, self.batches[int(index.reshape(-1)[0])])
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(
                f"`loss_fn` must return a scalar tensor, got {getattr(loss, 'shape', type(loss))}."
            )
        if not bool(torch.isfinite(loss.detach())):
            raise NonFiniteError(f"The loss is not finite ({loss.item()}).")
        return loss.reshape(())


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    if dtype in (torch.float32, torch.float64):
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def pyhessian_eigenvalues(
    inputs: OperatorInputs,
    k: int,
    which: str,
    tol: float,
    max_iter: int | None,
    return_eigenvectors: bool,
    train_mode: bool,
    seed: int,
) -> EigenResult:
    """Top-k eigenvalues by ``pyhessian.hessian(...).eigenvalues`` (see :func:`hessian_eigenvalues`).

    ``converged`` is our own guarantee checked afterwards (``||Hv - lambda v|| <= tol |lambda|`` for each
    returned pair, products not counted), not pyhessian's stopping rule (relative change of the Rayleigh
    quotient), which stops early.

    Raises:
        ValueError: for ``which`` other than ``"largest"`` (pyhessian has no smallest eigenvalues).
        ModuleNotFoundError: if pyhessian is not installed (``pip install lightning-landscape[pyhessian]``).
    """
    if which != "largest":
        raise ValueError(
            "`which` must be 'largest' with backend='pyhessian' (pyhessian computes only the top "
            f"eigenvalues), got {which!r}; use backend='lanczos' or 'power'."
        )
    try:
        import sys

        import pyhessian

        # The package re-exports the class under the module's name: fetch the module itself.
        ph_module: Any = sys.modules["pyhessian.hessian"]
    except ImportError as err:  # pragma: no cover - the extra is installed in tests
        raise ModuleNotFoundError(
            "backend='pyhessian' needs pyhessian: pip install 'lightning-landscape[pyhessian]'"
        ) from err

    model, loss_fn, batches = inputs.model, inputs.loss_fn, inputs.batches
    params = inputs.params  # every trainable parameter: pyhessian knows no selection
    device = params[0].device
    counter = {"products": 0}

    class _Counting(pyhessian.hessian):
        def dataloader_hv_product(self, v: Any) -> Any:
            counter["products"] += 1
            return super().dataloader_hv_product(v)

    original_hvp = ph_module.hessian_vector_product

    def counting_hvp(grads: Any, ps: Any, v: Any) -> Any:
        counter["products"] += 1
        return original_hvp(grads, ps, v)

    state = ModelState(model)
    wrapper = _LossModule(model, loss_fn, batches, train_mode)
    index_batches = [
        (torch.full((batch_size(b),), i, dtype=torch.long, device=device), torch.zeros(1, device=device))
        for i, b in enumerate(batches)
    ]
    try:
        with (
            torch.random.fork_rng(devices=rng_devices(model)),
            _default_dtype(params[0].dtype),
            warnings.catch_warnings(),
        ):
            # pyhessian's own backward(create_graph=True); we restore .grad, which breaks the cycle.
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
            torch.manual_seed(seed)
            ph_module.hessian_vector_product = counting_hvp
            cuda = device.type == "cuda"
            with torch.cuda.device(device) if cuda else contextlib.nullcontext():
                if len(index_batches) == 1:
                    hess = _Counting(wrapper, lambda out, _t: out, data=index_batches[0], cuda=cuda)
                else:
                    hess = _Counting(wrapper, lambda out, _t: out, dataloader=index_batches, cuda=cuda)
                kwargs = {"top_n": k, "tol": tol}
                if max_iter is not None:
                    kwargs["maxIter"] = max_iter
                values, vectors = hess.eigenvalues(**kwargs)
            flat = [torch.cat([t.detach().reshape(-1) for t in vec]).to(params[0].dtype) for vec in vectors]
            del hess
    finally:
        ph_module.hessian_vector_product = original_hvp
        state.restore()

    order = sorted(range(len(values)), key=lambda i: values[i], reverse=True)
    eigenvalues = torch.tensor([float(values[i]) for i in order], dtype=torch.float64)
    eigenvectors = torch.stack([flat[i] / torch.linalg.vector_norm(flat[i]) for i in order])
    residuals = _residuals(inputs, train_mode, seed, eigenvalues, eigenvectors)
    accepted = residuals <= tol * eigenvalues.abs()
    return EigenResult(
        eigenvalues=eigenvalues,
        eigenvectors=eigenvectors if return_eigenvectors else None,
        num_products=counter["products"],
        converged=bool(accepted.all()),
        backend="pyhessian",
        residuals=residuals,
        value_converged=accepted,
    )


def _residuals(
    inputs: OperatorInputs, train_mode: bool, seed: int, values: Tensor, vectors: Tensor
) -> Tensor:
    """``||Hv - lambda v||`` per returned pair, from one batched product with our own operator."""
    # memory="auto" whatever the call asked for: pyhessian itself ignores `memory`.
    op = HessianOperator.from_inputs(
        dataclasses.replace(inputs, memory="auto"), train_mode=train_mode, seed=seed
    )
    try:
        V = vectors.to(device=op.device, dtype=op.dtype).T
        R = op.matmat(V) - V * values.to(device=op.device, dtype=op.dtype)
        return torch.linalg.vector_norm(R, dim=0).to(device="cpu", dtype=torch.float64)
    finally:
        op.close()
