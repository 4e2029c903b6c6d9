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
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_landscape.curvature._params import ParamSelection, select_parameters

LossFn = Callable[[nn.Module, Any], Tensor]
"""``loss_fn(model, batch) -> scalar tensor``: the loss of ``model`` on one batch."""

MemoryMode = Literal["auto", "reuse", "recompute"]
_MEMORY_MODES = ("auto", "reuse", "recompute")

# Fraction of the free memory that "auto" lets the kept double-backward graph use.
_AUTO_MEMORY_FRACTION = 0.25
_FALLBACK_FREE_BYTES = 4 * 1024**3


class NonFiniteError(ValueError):
    """Raised when the loss or a Hessian-vector product is not finite (NaN or infinite)."""


def _first_tensor(batch: Any) -> Tensor | None:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping):
        items: Any = batch.values()
    elif isinstance(batch, (list, tuple)):
        items = batch
    else:
        return None
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def batch_size(batch: Any) -> int:
    """The size of a batch: the leading dimension of the first tensor found in it (depth first).

    Args:
        batch: a tensor, or a (nested) tuple, list or dict containing tensors.

    Raises:
        TypeError: if the batch holds no tensor.

    Example::

        >>> batch_size({"x": torch.zeros(8, 3), "y": torch.zeros(8)})
        8
    """
    tensor = _first_tensor(batch)
    if tensor is None:
        raise TypeError(
            "Each batch must be a tensor or a tuple/list/dict holding at least one tensor, "
            f"got {type(batch).__name__}."
        )
    return int(tensor.shape[0]) if tensor.dim() > 0 else 1


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model`` with ``requires_grad=True``, each once, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def validate_inputs(model: Any, loss_fn: Any, batches: Any) -> list[Any]:
    """Check the common arguments of the curvature functions; return the batches as a list.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``, ``loss_fn`` is not callable or ``batches`` is not
            a list/tuple of batches.
        ValueError: if ``batches`` is empty or the model has no trainable parameters.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable as loss_fn(model, batch), got {type(loss_fn).__name__}.")
    if isinstance(batches, (Tensor, Mapping)) or not isinstance(batches, Sequence):
        raise TypeError(
            "`batches` must be a list or tuple of batches (tensors, tuples or dicts), "
            f"got {type(batches).__name__}."
        )
    if len(batches) == 0:
        raise ValueError("`batches` is empty: pass at least one batch.")
    if not trainable_parameters(model):
        raise ValueError("`model` has no trainable parameters (none with requires_grad=True).")
    return list(batches)


@contextlib.contextmanager
def _math_attention() -> Iterator[None]:
    # Fused SDPA kernels (flash / memory-efficient, CPU and CUDA) have no double backward; the math
    # kernel is plain differentiable ops, so Hessian-vector products always run under it.
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        yield
        return
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
        for name, buf in list(module._buffers.items()):
            if buf is not None:
                saved.append((module, name, buf))
                module._buffers[name] = buf.clone()
    try:
        yield
    finally:
        for module, name, buf in saved:
            module._buffers[name] = buf


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return _FALLBACK_FREE_BYTES


class _SavedBytes:
    """Counts the bytes autograd saves for backward (deduplicated by storage) while active."""

    def __init__(self) -> None:
        self.nbytes = 0
        self._seen: set[int] = set()

    def pack(self, tensor: Tensor) -> Tensor:
        try:
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key not in self._seen:
                self._seen.add(key)
                self.nbytes += storage.nbytes()
        except (RuntimeError, NotImplementedError):  # pragma: no cover - exotic tensor subclasses
            self.nbytes += tensor.numel() * tensor.element_size()
        return tensor

    @staticmethod
    def unpack(tensor: Tensor) -> Tensor:
        return tensor


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
        with probe_context(self.model, self.train_mode, grad=True), _math_attention():
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
        counter = _SavedBytes()
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
                    if estimate > _AUTO_MEMORY_FRACTION * _available_bytes(self.device):
                        self.memory = "recompute"
                        return
                    if len(self._batches) == 1:
                        # The measured graph is the one to keep: building it again would cost a gradient.
                        self._grads = first
                        return
            term = loss * (self._weights[i] / self.total_weight)
            total = term if total is None else total + term
        assert total is not None
        with torch.enable_grad(), _math_attention():
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


__all__ = [
    "HessianOperator",
    "LossFn",
    "MemoryMode",
    "ModelState",
    "NonFiniteError",
    "ParamSelection",
    "batch_size",
    "select_parameters",
    "trainable_parameters",
    "validate_inputs",
]
