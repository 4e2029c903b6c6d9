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
import inspect
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_landscape.curvature._inputs import LossFn, batch_size
from lightning_landscape.curvature._model_state import math_attention, probe_context
from lightning_landscape.curvature._params import ParamSelection
from lightning_landscape.curvature.operators._double_backward import DoubleBackward
from lightning_landscape.curvature.operators._graph import GraphProducts
from lightning_landscape.curvature.operators._methods import HVP_METHODS, HvpMethod
from lightning_landscape.curvature.operators._strategies import wants_fsdp
from lightning_landscape.curvature.operators.inputs import MemoryMode, OperatorInputs


class NonFiniteError(ValueError):
    """Raised when the loss or a Hessian-vector product is not finite (NaN or infinite)."""


def _strategy(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Which operator a ``HessianOperator(*args, **kwargs)`` call asks for: "fsdp", "ddp" or ""."""
    try:
        bound = inspect.signature(HessianOperator.__init__).bind_partial(None, *args, **kwargs)
    except TypeError:  # __init__ raises it with its own message
        return ""
    if wants_fsdp(bound.arguments.get("model")):
        return "fsdp"
    return "ddp" if _wants_ddp(bound) else ""


def _wants_ddp(bound: inspect.BoundArguments) -> bool:
    """Whether the bound arguments of a ``HessianOperator`` call ask for the all-reducing operator."""
    distributed = bound.arguments.get("distributed")
    if distributed is None:
        return torch.distributed.is_available() and torch.distributed.is_initialized()
    return bool(distributed)


class HessianOperator(GraphProducts):
    r"""The Hessian of a loss over fixed batches w.r.t. a model's trainable parameters, as a linear operator.

    The loss is the batch-size-weighted mean of ``loss_fn(model, batch)`` over ``batches`` (the batch size
    is the leading dimension of the first tensor found in the batch). Parameters with
    ``requires_grad=False`` are left out; vectors are flat, in the order of ``model.parameters()``, in the
    parameters' dtype and on their device.

    ``hvp`` chooses how a product is taken, every way under the math scaled-dot-product-attention kernel
    (flash and memory-efficient attention have no double backward):

    * ``"double_backward"``: reverse-over-reverse through a gradient graph (kept or rebuilt, see
      ``memory``); exact to rounding, works where forward-over-reverse does not.
    * ``"forward_over_reverse"``: ``torch.func.jvp`` of the gradient; exact to rounding, no graph kept
      between products; fails on operations without a forward-mode rule (``F.mse_loss``'s backward,
      pytorch issue 123996; custom ``autograd.Function``\ s without ``jvp``).
    * ``"finite_difference"``: :math:`(\nabla L(\theta + hv) - \nabla L(\theta - hv)) / 2h` with
      :math:`h = \sqrt{\epsilon} \max(\|\theta\|, 1) / \|v\|`, :math:`\epsilon` of the parameters' dtype
      (:mod:`._finite_difference`): first-order backward passes only (fused kernels, FSDP); measured
      relative error about 1e-8 in float64, 1e-5 to 1e-4 in float32, 1e-3 where a float64 model's loss is
      float32 (Hugging Face's causal-LM loss).
    * ``"auto"`` (default): double backward where it works, else the next that does, chosen at the first
      product with one warning saying why; :attr:`hvp` then names the method.

    Under FSDP2 (``fully_shard``) the constructor returns a :class:`~.fsdp.FSDPHessianOperator` (finite
    differences of sharded gradients); DeepSpeed and tensor-parallel parameters are refused.

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

    Under an initialized ``torch.distributed`` process group (and ``distributed`` not ``False``) the
    constructor returns a :class:`~.ddp.DDPHessianOperator` (a subclass: the strategy is chosen once, here):
    each rank passes its own batches and products are all-reduced as (sum of batch-size-weighted products) /
    (total batch size over ranks), so every rank gets the product of the global Hessian.

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
        hvp: ``"auto"``, ``"double_backward"``, ``"forward_over_reverse"`` or ``"finite_difference"``.

    Raises:
        TypeError: for a non-module ``model``, a non-callable ``loss_fn`` or batches that are not a list of
            tensors/tuples/dicts.
        ValueError: for empty ``batches``, no trainable parameters, an unknown ``memory`` or ``hvp``, a
            ``params`` that selects nothing, a loss that is not a scalar, DeepSpeed or tensor-parallel
            parameters, or under FSDP an ``hvp`` other than ``"auto"``/``"finite_difference"``.
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

    #: Whether products are all-reduced across ranks (:class:`~.ddp.DDPHessianOperator`).
    distributed: bool = False

    def __new__(cls, *args: Any, **kwargs: Any) -> HessianOperator:
        strategy = _strategy(args, kwargs) if cls is HessianOperator else ""
        if strategy == "fsdp":
            from lightning_landscape.curvature.operators.fsdp import FSDPHessianOperator

            return super().__new__(FSDPHessianOperator)
        if strategy == "ddp":
            from lightning_landscape.curvature.operators.ddp import DDPHessianOperator

            return super().__new__(DDPHessianOperator)
        return super().__new__(cls)

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
        hvp: HvpMethod = "auto",
    ) -> None:
        inputs = OperatorInputs.check(model, loss_fn, batches, memory, params, hvp)
        self._start(inputs, train_mode, seed, batched)

    @classmethod
    def from_inputs(
        cls,
        inputs: OperatorInputs,
        *,
        train_mode: bool = False,
        seed: int = 0,
        distributed: bool | None = None,
        batched: bool = True,
    ) -> HessianOperator:
        """The operator of inputs checked by :meth:`OperatorInputs.check` (they are not checked again).

        Example:
            >>> loss_fn = lambda m, b: (m(b) ** 2).mean()
            >>> inputs = OperatorInputs.check(nn.Linear(2, 1), loss_fn, [torch.ones(4, 2)])
            >>> HessianOperator.from_inputs(inputs).dense().tolist()
            [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]
        """
        op = cls.__new__(cls, inputs.model, distributed=distributed)
        op._start(inputs, train_mode, seed, batched)
        return op

    def _start(self, inputs: OperatorInputs, train_mode: bool, seed: int, batched: bool) -> None:
        self._batches = inputs.batches
        self.model = inputs.model
        self.loss_fn = inputs.loss_fn
        self.train_mode = bool(train_mode)
        self.seed = int(seed)
        self.param_names: list[str] = list(inputs.names)
        self.params: list[Tensor] = list(inputs.params)
        self.num_params: int = inputs.num_params
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self._products = DoubleBackward(self.params, batched)
        self.num_products = 0
        self._weights = [float(batch_size(b)) for b in self._batches]
        self.total_weight = self._total_weight(sum(self._weights))
        self._grads: list[Tensor | None] | None = None
        self._bad_loss = False
        #: How products are taken: the method asked for, or ``"auto"`` until the first product chooses.
        self.hvp: HvpMethod = self._default_hvp(inputs.hvp)
        self.memory: Literal["reuse", "recompute"] = "recompute" if inputs.memory == "recompute" else "reuse"
        if inputs.memory != "recompute" and self.hvp in ("auto", "double_backward"):
            self._build_graph(auto=inputs.memory == "auto")

    def _default_hvp(self, hvp: HvpMethod) -> HvpMethod:
        """The product method this operator runs for ``hvp`` (the FSDP operator can only difference)."""
        return hvp

    # -- what the all-reducing subclass changes ---------------------------------------------------------
    def _total_weight(self, local: float) -> float:
        """The total batch size the products are divided by (all ranks' under DDP)."""
        return local

    def _loss_not_finite(self, loss: Tensor, index: int) -> None:
        """A non-finite loss on batch ``index``: raise now (the DDP operator defers to the next reduction)."""
        raise NonFiniteError(f"The loss is not finite ({loss.item()}) on batch {index}.")

    def _reduce(self, hv: Tensor, loss_bad: bool) -> Tensor:
        """This process's ``[j, n]`` products made the operator's (summed over ranks under DDP)."""
        return hv

    # -- evaluation ---------------------------------------------------------------------------------
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

    # -- products ---------------------------------------------------------------------------------
    @property
    def batched(self) -> bool:
        """Whether :meth:`matmat` vectorizes its products (turned off for good where vmap cannot)."""
        return self._products.batched

    @batched.setter
    def batched(self, value: bool) -> None:
        self._products.batched = bool(value)

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

    def matvec_into(self, v: Tensor, out: Tensor, beta: float = 0.0) -> Tensor:
        """:meth:`matvec` written into ``out`` (``out = Hv + beta * out``), which is returned: no new
        parameter-sized vector is made.

        The solvers hand their next basis vector here (:func:`~.base.matvec_into`); ``out`` must not
        share memory with ``v``. With ``beta`` the product is added to the scaled ``out`` piece by piece
        (one pass; the three-term recurrence keeps two vectors so). The finiteness check is on the result.

        Raises:
            ValueError: if ``v`` does not have ``num_params`` elements, or ``out`` is not a contiguous flat
                tensor of ``num_params`` elements in the operator's dtype and on its device.
            NonFiniteError: if the loss or the product is not finite.

        Example:
            >>> op = HessianOperator(nn.Linear(2, 1), lambda m, b: (m(b) ** 2).mean(), [torch.ones(4, 2)])
            >>> out = torch.empty(op.num_params)
            >>> op.matvec_into(torch.ones(op.num_params), out) is out, out.tolist()
            (True, [6.0, 6.0, 6.0])
            >>> op.matvec_into(torch.ones(op.num_params), out, beta=-1.0).tolist()  # Hv - out
            [0.0, 0.0, 0.0]
        """
        if v.numel() != self.num_params:
            raise ValueError(f"`v` must have num_params={self.num_params} elements, got {v.numel()}.")
        if (
            out.shape != (self.num_params,)
            or out.dtype != self.dtype
            or out.device != self.device
            or not out.is_contiguous()
        ):
            raise ValueError(
                f"`out` must be a contiguous flat tensor of num_params={self.num_params} elements, "
                f"{self.dtype} on {self.device}; got {list(out.shape)} {out.dtype} on {out.device}."
            )
        self._apply(v.detach().reshape(1, -1), out.view(1, -1), float(beta))
        return out

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

    def _apply(self, rows: Tensor, out: Tensor | None = None, beta: float = 0.0) -> Tensor:
        rows = rows.to(device=self.device, dtype=self.dtype)
        j = rows.shape[0]
        loss_bad = self._bad_loss
        if self.hvp == "auto":
            hv, loss_bad = self._auto(rows, loss_bad)
        elif self.hvp == "forward_over_reverse":
            hv = self._forward_over_reverse(rows)
        elif self.hvp == "finite_difference":
            hv = self._finite_difference(rows)
        elif self.distributed:  # products are all-reduced before they meet `out`
            hv, loss_bad = self._double_backward(rows, loss_bad)
        else:
            hv, loss_bad = self._double_backward(rows, loss_bad, out, beta)
        hv = self._reduce(hv, loss_bad)
        if out is not None and hv is not out:
            hv = out.copy_(hv) if beta == 0.0 else torch.add(hv, out, alpha=beta, out=out)
        self.num_products += j
        # One reduction (no mask the size of the product); the exact check only when the sum is not finite.
        if not bool(torch.isfinite(hv.sum())) and not bool(torch.isfinite(hv).all()):
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


__all__ = ["HVP_METHODS", "HessianOperator", "HvpMethod", "NonFiniteError"]
