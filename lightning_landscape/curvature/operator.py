r"""The Hessian of a loss over fixed batches as a linear operator on flat parameter vectors.

For trainable parameters :math:`\theta \in \mathbb{R}^n` and fixed batches :math:`B_1, \dots, B_m` of
sizes :math:`|B_i|`, the operator is the Hessian of the batch-size-weighted mean loss

.. math::

    L(\theta) = \frac{\sum_i |B_i| \, \ell(\theta; B_i)}{\sum_i |B_i|}, \qquad
    H = \nabla^2_\theta L(\theta) \in \mathbb{R}^{n \times n},

and :meth:`HessianOperator.matvec` returns :math:`Hv` without ever forming :math:`H`
(reverse-over-reverse differentiation, "Pearlmutter's trick").
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_landscape.curvature._inputs import LossFn, batch_size, validate_inputs
from lightning_landscape.curvature._memory import SavedBytes, available_bytes
from lightning_landscape.curvature._model_state import (
    math_attention,
    probe_context,
)
from lightning_landscape.curvature._params import ParamSelection, select_parameters

MemoryMode = Literal["auto", "reuse", "recompute"]
_MEMORY_MODES = ("auto", "reuse", "recompute")

# Fraction of the free memory that "auto" lets the kept double-backward graph use.
_AUTO_MEMORY_FRACTION = 0.25


class NonFiniteError(ValueError):
    """Raised when the loss or a Hessian-vector product is not finite (NaN or infinite)."""


class HessianOperator:
    r"""The Hessian of a loss over fixed batches w.r.t. a model's trainable parameters, as a linear operator.

    The loss is the batch-size-weighted mean of ``loss_fn(model, batch)`` over ``batches`` (the batch size
    is the leading dimension of the first tensor found in the batch). Parameters with
    ``requires_grad=False`` are left out; vectors are flat, in the order of ``model.parameters()``, in the
    parameters' dtype and on their device.

    Products are reverse-over-reverse (double backward), which works where forward-over-reverse does not
    (``jvp`` of a gradient breaks on ``nn.MSELoss``, pytorch issue 123996) and are run under the math
    scaled-dot-product-attention kernel, the only one with a double backward (CPU flash attention has none).

    ``memory`` chooses how:

    * ``"reuse"``: build the gradient graph once (``create_graph=True``) and backpropagate through it for
      every product (about 1.4x the cost of a gradient); the graph of all batches stays in memory.
    * ``"recompute"``: forward and double backward per batch and product (about 2.5-3x a gradient), only
      one batch's graph alive at a time.
    * ``"auto"``: measure the bytes autograd saves for the first batch, multiply by the number of batches,
      and reuse if that is below a quarter of the free memory of the device (CUDA: ``mem_get_info``;
      CPU: available physical pages), else recompute.

    ``params`` restricts the variables to a selection of the trainable parameters (module or parameter name
    prefixes, or one regular expression; see :func:`~._params.select_parameters`):
    the operator is then the block :math:`H_{SS}` of the full Hessian on the selected rows and columns, the
    other parameters held at their values. :attr:`param_names` lists the selected names and
    :meth:`slices` where each lies in a flat vector.

    :meth:`matmat` applies the operator to several vectors at once: with ``batched`` (default) the ``j``
    products share one vectorized backward pass (``torch.autograd.grad(..., is_grads_batched=True)``, a
    ``vmap`` over the double backward), and with ``memory="recompute"`` one forward and gradient graph per
    batch serve all ``j`` vectors. Each vector counts as one product in :attr:`num_products`.

    By default the loss is evaluated in eval mode (dropout off, BatchNorm on running statistics) so that
    :math:`H` is the Hessian of a deterministic function; ``train_mode=True`` keeps the model's own flags,
    and then random layers draw from a private RNG seeded by ``seed`` and the batch index, so every product
    sees the same masks. Buffers (e.g. BatchNorm running statistics) are never modified.

    Under an initialized ``torch.distributed`` process group (and ``distributed`` not ``False``) each rank
    passes its own batches; products are all-reduced as (sum of batch-size-weighted products) / (total
    batch size over ranks), so every rank gets the product of the global Hessian.

    The model is left exactly as found: modes, parameter values, ``.grad``, ``requires_grad`` and the
    global RNG states.

    Args:
        model: the model; its trainable parameters are the variables.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: a non-empty list of batches (tensors, tuples or dicts), already on the model's device.
        memory: ``"auto"``, ``"reuse"`` or ``"recompute"`` (see above).
        train_mode: evaluate the loss with the model's own train/eval flags instead of eval mode.
        seed: seeds the private RNG used by random layers in train mode.
        distributed: all-reduce products across ranks; ``None`` does so when ``torch.distributed`` is
            initialized.
        params: ``None`` (every trainable parameter), a list of module/parameter name prefixes or one
            regular expression: the parameters whose Hessian block the operator is.
        batched: let :meth:`matmat` vectorize its products over the vectors (falls back to one backward per
            vector, for good, if an operation of the model has no batching rule).

    Raises:
        TypeError: for a non-module ``model``, a non-callable ``loss_fn`` or batches that are not a list of
            tensors/tuples/dicts.
        ValueError: for empty ``batches``, no trainable parameters, an unknown ``memory``, a ``params`` that
            selects nothing or a loss that is not a scalar.
        NonFiniteError: if the loss (on construction with ``"reuse"``, otherwise on a product) or a product
            is not finite.

    Example:
        >>> model = nn.Linear(3, 1)
        >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
        >>> op = HessianOperator(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), [(x, y)])
        >>> hv = op.matvec(torch.ones(op.num_params))
        >>> HV = op.matmat(torch.eye(op.num_params)[:, :2])  # two products in one pass
        >>> op.num_products, tuple(HV.shape)
        (3, (4, 2))
        >>> HessianOperator(model, lambda m, b: m(b[0]).sum(), [(x, y)], params=["bias"]).param_names
        ['bias']
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Sequence[Any],
        memory: MemoryMode = "auto",
        train_mode: bool = False,
        seed: int = 0,
        distributed: bool | None = None,
        params: ParamSelection = None,
        batched: bool = True,
    ) -> None:
        self._batches = validate_inputs(model, loss_fn, batches)
        if memory not in _MEMORY_MODES:
            raise ValueError(f"`memory` must be one of {_MEMORY_MODES}, got {memory!r}.")
        self.model = model
        self.loss_fn = loss_fn
        self.train_mode = bool(train_mode)
        self.seed = int(seed)
        named = select_parameters(model, params)
        self.param_names: list[str] = [name for name, _ in named]
        self.params: list[Tensor] = [p for _, p in named]
        self.batched = bool(batched)
        self.num_params: int = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.num_products = 0
        self._weights = [float(batch_size(b)) for b in self._batches]

        if distributed is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.distributed = bool(distributed)
        total = torch.tensor([sum(self._weights)], dtype=torch.float64, device=self._comm_device())
        if self.distributed:
            torch.distributed.all_reduce(total)
        self.total_weight = float(total.item())

        self._grads: list[Tensor | None] | None = None
        self._bad_loss = False
        self.memory: Literal["reuse", "recompute"] = "recompute" if memory == "recompute" else "reuse"
        if memory != "recompute":
            self._build_graph(auto=memory == "auto")

    # -- evaluation ---------------------------------------------------------------------------------
    def _comm_device(self) -> torch.device:
        # gloo reduces CPU tensors, nccl CUDA ones: follow the parameters.
        return self.device

    @contextlib.contextmanager
    def _probe(self, index: int) -> Iterator[None]:
        with probe_context(self.model, self.train_mode, grad=True), math_attention():
            torch.manual_seed(self.seed * 1_000_003 + index)
            yield

    def _loss(self, index: int) -> Tensor:
        loss = self.loss_fn(self.model, self._batches[index])
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"`loss_fn` must return a scalar tensor, got {shape} for batch {index}.")
        return loss.reshape(())

    def _check_loss(self, loss: Tensor, index: int) -> None:
        if not bool(torch.isfinite(loss.detach())):
            raise NonFiniteError(f"The loss is not finite ({loss.item()}) on batch {index}.")

    def _grad(self, loss: Tensor) -> list[Tensor | None]:
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        return list(grads)

    def _build_graph(self, auto: bool) -> None:
        total: Tensor | None = None
        counter = SavedBytes()
        for i in range(len(self._batches)):
            hooks = torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack)
            with self._probe(i), hooks if (auto and i == 0) else contextlib.nullcontext():
                loss = self._loss(i)
                if not bool(torch.isfinite(loss.detach())):
                    if not self.distributed:
                        self._check_loss(loss, i)
                    # Raised in the first product's all-reduce, so that no rank waits forever.
                    self._bad_loss = True
                if auto and i == 0:
                    # The double-backward graph is what a kept graph costs: measure it on batch 0.
                    first = self._grad(loss * (self._weights[0] / self.total_weight))
                    estimate = counter.nbytes * len(self._batches)
                    if estimate > _AUTO_MEMORY_FRACTION * available_bytes(self.device):
                        self.memory = "recompute"
                        return
                    if len(self._batches) == 1:
                        # The measured graph is the one to keep: building it again would cost a gradient.
                        self._grads = first
                        return
            term = loss * (self._weights[i] / self.total_weight)
            total = term if total is None else total + term
        assert total is not None
        with torch.enable_grad(), math_attention():
            self._grads = self._grad(total)

    # -- products -----------------------------------------------------------------------------------
    def _hvp(self, grads: Sequence[Tensor | None], rows: Tensor, retain: bool) -> Tensor:
        """``[j, n]`` products of the rows of ``rows`` through the gradient graph ``grads``."""
        j = rows.shape[0]
        pairs = [
            (g, p) for g, p in zip(grads, self._split(rows), strict=True) if g is not None and g.requires_grad
        ]
        if not pairs:
            return torch.zeros(j, self.num_params, dtype=self.dtype, device=self.device)
        outputs = [g for g, _ in pairs]
        if j > 1 and self.batched:
            batched = self._hvp_batched(outputs, [v for _, v in pairs])
            if batched is not None:
                return batched
        out = []
        for r in range(j):
            hv = torch.autograd.grad(
                outputs,
                self.params,
                grad_outputs=[v[r] for _, v in pairs],
                retain_graph=retain or r < j - 1,
                allow_unused=True,
            )
            out.append(self._flatten_rows(hv, 1))
        return torch.cat(out)

    def _hvp_batched(self, outputs: list[Tensor], vs: list[Tensor]) -> Tensor | None:
        j = vs[0].shape[0]
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                # The graph is kept either way: a fallback below must be able to run through it again.
                hv = torch.autograd.grad(
                    outputs,
                    self.params,
                    grad_outputs=vs,
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
        except (RuntimeError, NotImplementedError):
            # An operation without a batching rule (or without a batched double backward): loop instead.
            self.batched = False
            return None
        for w in caught:
            if "performance drop" in str(w.message):
                # vmap fell back to a per-vector loop inside: the plain loop is as fast, use it from now on.
                self.batched = False
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return self._flatten_rows(hv, j)

    def _flatten_rows(self, tensors: Sequence[Tensor | None], j: int) -> Tensor:
        return torch.cat(
            [
                torch.zeros(j, p.numel(), dtype=self.dtype, device=self.device)
                if t is None
                else t.reshape(j, -1).to(self.dtype)
                for t, p in zip(tensors, self.params, strict=True)
            ],
            dim=1,
        )

    def _split(self, rows: Tensor) -> list[Tensor]:
        """The ``[j, n]`` rows cut into ``[j, *p.shape]`` pieces, one per parameter."""
        out, offset = [], 0
        for p in self.params:
            out.append(rows[:, offset : offset + p.numel()].reshape(rows.shape[0], *p.shape).to(p.dtype))
            offset += p.numel()
        return out

    def slices(self) -> dict[str, slice]:
        """Where each selected parameter lies in a flat vector: ``{name: slice}``, in order.

        Example:
            >>> op = HessianOperator(nn.Linear(2, 1), lambda m, b: m(b).sum(), [torch.ones(1, 2)])
            >>> op.slices()
            {'weight': slice(0, 2, None), 'bias': slice(2, 3, None)}
        """
        out, offset = {}, 0
        for name, p in zip(self.param_names, self.params, strict=True):
            out[name] = slice(offset, offset + p.numel())
            offset += p.numel()
        return out

    def matvec(self, v: Tensor) -> Tensor:
        """The product :math:`Hv` for a flat vector ``v`` of length :attr:`num_params`.

        Raises:
            ValueError: if ``v`` does not have ``num_params`` elements.
            NonFiniteError: if the loss or the product is not finite.
        """
        if v.numel() != self.num_params:
            raise ValueError(f"`v` must have num_params={self.num_params} elements, got {v.numel()}.")
        return self._apply(v.detach().reshape(1, -1))[0]

    def matmat(self, V: Tensor) -> Tensor:
        """The products :math:`HV` for the ``j`` columns of ``V`` (shape ``[n, j]``, like scipy's ``matmat``).

        Equal to the stacked :meth:`matvec` of each column (to rounding); ``j`` products in one pass (see
        the class docstring), counted as ``j`` in :attr:`num_products`.

        Raises:
            ValueError: if ``V`` is not ``[num_params, j]``.
            NonFiniteError: if the loss or a product is not finite.
        """
        if V.dim() != 2 or V.shape[0] != self.num_params:
            raise ValueError(f"`V` must have shape [num_params={self.num_params}, j], got {list(V.shape)}.")
        if V.shape[1] == 0:
            return V.detach().to(device=self.device, dtype=self.dtype).clone()
        return self._apply(V.detach().T).T

    def _apply(self, rows: Tensor) -> Tensor:
        rows = rows.to(device=self.device, dtype=self.dtype)
        j = rows.shape[0]
        loss_bad = self._bad_loss
        if self.memory == "reuse":
            assert self._grads is not None
            hv = self._hvp(self._grads, rows, retain=True)
        else:
            acc = torch.zeros(j, self.num_params, dtype=self.dtype, device=self.device)
            for i in range(len(self._batches)):
                with self._probe(i):
                    loss = self._loss(i)
                    if not bool(torch.isfinite(loss.detach())):
                        loss_bad = True
                        if not self.distributed:
                            self._check_loss(loss, i)
                    grads = self._grad(loss)
                    acc += self._hvp(grads, rows, retain=False) * self._weights[i]
                    del grads
            hv = acc / self.total_weight
        if self.distributed:
            flag = torch.tensor([1.0 if loss_bad else 0.0], dtype=self.dtype, device=self.device)
            packed = torch.cat([hv.reshape(-1), flag])
            torch.distributed.all_reduce(packed)
            hv, bad = packed[:-1].reshape(j, self.num_params), float(packed[-1].item())
            if bad > 0:
                where = "on this rank" if loss_bad else "on another rank"
                raise NonFiniteError(f"The loss is not finite {where} (Hessian-vector product aborted).")
        self.num_products += j
        if not bool(torch.isfinite(hv).all()):
            raise NonFiniteError(
                f"The Hessian-vector product is not finite ({int((~torch.isfinite(hv)).sum())} of "
                f"{hv.numel()} entries) at product {self.num_products}."
            )
        return hv

    def close(self) -> None:
        """Free the kept gradient graph (also done when the operator is garbage collected)."""
        self._grads = None

    def dense(self) -> Tensor:
        """The full :math:`n \\times n` Hessian built from ``n`` products (for tests and tiny models)."""
        eye = torch.eye(self.num_params, dtype=self.dtype, device=self.device)
        cols = [self.matmat(eye[:, i : i + 64]) for i in range(0, self.num_params, 64)]
        return torch.cat(cols, dim=1)


__all__ = ["HessianOperator", "MemoryMode", "NonFiniteError"]
