r"""The loss at many points of an affine subspace of weight space, vectorized.

A point is :math:`\theta(c) = \theta_0 + \sum_j c_j d_j` (and buffers :math:`b(c) = b_0 + \sum_j c_j e_j`,
used to interpolate BatchNorm statistics between two models). The loss at a point is the batch-size-weighted
mean of ``loss_fn(model, batch)`` over the fixed batches, as in the curvature core.

On a CPU (``chunk_size=None``) the points run one by one, each at the cost of its own forward: the model is
reparametrized once (``torch.func.functional_call``) with tensors into which the weights of each point are
written in place, one fused add per weight and point (points of a row share their partial sum, see
:class:`~._affine.PointWeights`); layers applied to the data itself (the first Linear or Conv) combine
products cached per batch instead of running (:class:`~._affine.PointProducts`). A 41 x 41 plane of a
784-256-256-10 MLP at batch 512 so takes about 1.9x its arithmetic floor (the multiply-adds after the first
layer); the rest is the loss's own elementwise work (log-softmax, ReLU, biases).

Elsewhere (or with ``chunk_size``) many points share one forward: ``torch.func.vmap`` maps the loss over a
chunk of coefficient vectors, so a chunk of ``C`` points is one batched forward per batch (one large matrix
product per layer instead of ``C`` small ones). The chunk size is bounded by a memory budget: the weights of a
point plus the activations of one forward (measured once, as the bytes autograd saves on the first batch),
times ``C``. Where ``vmap`` cannot run the loss (a ``.item()`` or data-dependent control flow in ``loss_fn``,
in-place updates of unbatched buffers such as BatchNorm statistics in train mode), the points are evaluated
one by one, with one warning saying why. Layers applied to the data take their products from a cache per
batch (:class:`~._affine.AffineLayers`).

The model is never modified: the weights of a point live only in the call, the model's own buffers are
swapped for copies, the train/eval flags and the global RNG are restored.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_landscape.curvature._inputs import LossFn, LossOf, batch_size, validate_inputs
from lightning_landscape.curvature._memory import SavedBytes, available_bytes
from lightning_landscape.curvature._model_state import probe_context
from lightning_landscape.curvature.operators.hessian import NonFiniteError
from lightning_landscape.landscape._affine import AffineLayers, PointProducts, PointWeights
from lightning_landscape.landscape.directions import named_trainable

_BUDGET_FRACTION = 0.25
# Beyond a few hundred points per forward the batched products are as efficient as they get; larger chunks
# only hold more memory.
_MAX_CHUNK = 256
# On a CPU the elementwise passes over a chunk's activations run from the cache only for small chunks:
# 16-32 points of the 784-256-256-10 MLP at batch 512 measured 1.5x faster than 256.
_MAX_CHUNK_CPU = 32
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


class _Sweep(nn.Module):
    """Runs ``sweep(wrapper)`` inside one ``functional_call``: the weights of a point are written in place
    into the tensors the call installed, so the model is reparametrized once for all points."""

    def __init__(self, wrapper: LossOf) -> None:
        super().__init__()
        self.wrapper = wrapper

    def forward(self, sweep: Any) -> Any:
        return sweep(self.wrapper)


class GridEvaluator:
    """The loss of ``model`` over ``batches`` at many points :math:`\\theta_0 + \\sum_j c_j d_j`.

    Args:
        model: the model (left exactly as found).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: non-empty list of batches on the model's device.
        train_mode: evaluate with the model's own train/eval flags (random layers then see the same masks at
            every point: the RNG is seeded per batch); default eval mode.
        chunk_size: points per ``vmap``'d forward; ``None`` runs point by point with the weights written in
            place on a CPU, and chooses from ``memory_budget`` elsewhere.
        memory_budget: bytes one chunk may use; ``None`` is a quarter of the free memory of the device.
        vectorize: ``False`` evaluates point by point with new weights per point (the plain reference the
            fast paths are tested against).
        seed: seeds random layers in train mode.
        distributed: all-reduce the weighted losses across ranks (each rank passes its own batches); ``None``
            does so when ``torch.distributed`` is initialized.
        cache_products: compute the products of layers applied to the data once per batch and combine them
            per point (see :mod:`~._affine`); ``False`` runs every layer (for benchmarks and tests).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Sequence[Any],
        *,
        train_mode: bool = False,
        chunk_size: int | None = None,
        memory_budget: int | None = None,
        vectorize: bool = True,
        seed: int = 0,
        distributed: bool | None = None,
        cache_products: bool = True,
    ) -> None:
        self.batches = validate_inputs(model, loss_fn, batches)
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)):
            raise ValueError(f"`chunk_size` must be None or an integer >= 1, got {chunk_size!r}.")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"`chunk_size` must be None or an integer >= 1, got {chunk_size!r}.")
        if memory_budget is not None and (not isinstance(memory_budget, int) or memory_budget < 1):
            raise ValueError(
                f"`memory_budget` must be None or a number of bytes >= 1, got {memory_budget!r}."
            )
        self.model = model
        self.wrapper = LossOf(model, loss_fn)
        self.train_mode = bool(train_mode)
        self.chunk_size = chunk_size
        self.memory_budget = memory_budget
        self.vectorize = bool(vectorize)
        self.seed = int(seed)
        self.weights = [float(batch_size(b)) for b in self.batches]
        if distributed is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.distributed = bool(distributed)
        self.cache_products = bool(cache_products)
        self.vectorized_last = False  # whether the last call ran under vmap (for tests and benchmarks)
        self.path_last = ""  # "vmap", "in_place" or "loop": how the last call ran
        self.last_chunk_size = 0

    def _context(self) -> contextlib.AbstractContextManager[None]:
        return probe_context(self.model, self.train_mode, grad=False)

    def _seed(self, index: int) -> None:
        if self.train_mode:
            torch.manual_seed(self.seed * 1_000_003 + index)

    def _point_fn(
        self,
        origin: Mapping[str, Tensor],
        stacked: Mapping[str, Tensor],
        fixed: Mapping[str, Tensor],
        affine: AffineLayers | None = None,
    ) -> Any:
        def loss_at(c: Tensor, batch: Any) -> Tensor:
            state = {f"model.{n}": t for n, t in fixed.items()}
            if affine is not None:
                affine.new_forward()
            for name, base in origin.items():
                coef = c.to(base.dtype)
                if name in stacked:
                    if affine is not None:
                        point = affine.placeholder(name, base, stacked[name], coef)
                    else:
                        point = base + torch.tensordot(coef, stacked[name], dims=1)
                    state[f"model.{name}"] = point
                else:
                    state[f"model.{name}"] = base
            return torch.func.functional_call(self.wrapper, state, (batch,), strict=False)

        return loss_at

    def _measure(self, loss_at: Any, coeffs: Tensor) -> int:
        """Bytes of one point's forward (weights + activations), measured on the largest batch."""
        counter = SavedBytes()
        index = max(range(len(self.batches)), key=lambda i: self.weights[i])
        self._seed(index)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
            # Weights that are leaves make autograd save every activation of the forward (buffers stay
            # constants: BatchNorm refuses statistics that require grad).
            loss_at(coeffs[0], self.batches[index])
        params = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return max(counter.nbytes, 1) + params

    def _chunk(self, loss_at: Any, coeffs: Tensor, device: torch.device) -> int:
        if self.chunk_size is not None:
            return min(self.chunk_size, coeffs.shape[0])
        budget = self.memory_budget
        if budget is None:
            budget = int(_BUDGET_FRACTION * available_bytes(device))
        per_point = self._measure(loss_at, coeffs)
        cap = _MAX_CHUNK_CPU if device.type == "cpu" else _MAX_CHUNK
        return max(1, min(coeffs.shape[0], cap, budget // per_point))

    def _in_place(
        self,
        origin: dict[str, Tensor],
        directions: Mapping[str, Sequence[Tensor]],
        fixed: Mapping[str, Tensor],
        coeffs: Tensor,
        cache: bool,
    ) -> Tensor:
        """Point by point, the weights of each point written in place (:class:`PointWeights`), layers on the
        data from cached products (:class:`PointProducts`) where ``cache``."""
        weights = PointWeights(origin, directions)
        products = PointProducts(weights) if cache else None
        points = coeffs.tolist()

        def sweep(part: list[list[float]]) -> Any:
            def run(wrapper: LossOf) -> list[float]:
                out = []
                for coef in part:
                    weights.move_to(coef)
                    acc = 0.0
                    for i, batch in enumerate(self.batches):
                        self._seed(i)
                        if products is not None:
                            products.new_forward(i)
                        acc += float(wrapper(batch)) * self.weights[i]
                    out.append(acc)
                return out

            return run

        def call(part: list[list[float]], watched: Mapping[str, Tensor]) -> list[float]:
            state = {f"wrapper.model.{n}": t for n, t in fixed.items()}
            state.update({f"wrapper.model.{n}": watched.get(n, t) for n, t in weights.tensors.items()})
            return list(torch.func.functional_call(_Sweep(self.wrapper), state, (sweep(part),), strict=False))

        if products is None:
            return torch.tensor(call(points, {}), dtype=torch.float64)
        # Two points with every moving weight watched find the calls on the data; the rest watch only theirs.
        values = call(points[:2], products.watch(weights.names.values()))
        shortcut = products.shortcut_weights()
        weights.set_lazy(shortcut)
        values += call(points[2:], products.watch(shortcut))
        return torch.tensor(values, dtype=torch.float64)

    def _loop(self, loss_at: Any, coeffs: Tensor, start: int) -> Tensor:
        out = torch.zeros(coeffs.shape[0] - start, dtype=torch.float64)
        for i, batch in enumerate(self.batches):
            for p in range(start, coeffs.shape[0]):
                self._seed(i)
                out[p - start] += float(loss_at(coeffs[p], batch)) * self.weights[i]
        return out

    def losses(
        self,
        origin: Mapping[str, Tensor],
        basis: Sequence[Mapping[str, Tensor]],
        coeffs: Tensor,
        buffers: Mapping[str, Tensor] | None = None,
        buffer_basis: Sequence[Mapping[str, Tensor]] | None = None,
    ) -> Tensor:
        """The mean loss at every point ``origin + coeffs[p] @ basis`` (``coeffs`` is ``[P, len(basis)]``).

        ``buffers`` replace the model's buffers of those names; ``buffer_basis`` (one dict per basis
        direction, over some of the ``buffers``) moves them along with the weights.

        Returns:
            ``[P]`` float64 losses on the CPU.

        Raises:
            NonFiniteError: never; non-finite losses are returned as they are (``inf``/``nan``).
        """
        names = list(origin)
        directions = {n: [b[n].detach() for b in basis] for n in names} if basis else {}
        fixed: dict[str, Tensor] = {}
        buf_origin: dict[str, Tensor] = {}
        if buffers is not None:
            moving = set().union(*(set(b) for b in buffer_basis)) if buffer_basis else set()
            for name, buf in buffers.items():
                (buf_origin if name in moving else fixed)[name] = buf.detach()
            if buffer_basis:
                directions.update({n: [b[n].detach() for b in buffer_basis] for n in buf_origin})
        all_origin = {**{n: origin[n].detach() for n in names}, **buf_origin}
        device = next(iter(origin.values())).device
        in_place = self.vectorize and self.chunk_size is None and device.type == "cpu"
        # The in-place path reads the directions where they are; vmap and the loop take them stacked.
        stacked = {} if in_place else {n: torch.stack(d) for n, d in directions.items()}
        loss_at = self._point_fn(all_origin, stacked, fixed)
        affine = AffineLayers() if self.cache_products else None
        batched_loss_at = self._point_fn(all_origin, stacked, fixed, affine)
        coeffs = coeffs.to(device=device, dtype=torch.float64)
        total = torch.zeros(coeffs.shape[0], dtype=torch.float64)
        with self._context():
            done = 0
            self.vectorized_last = self.vectorize
            self.path_last = "loop"
            if in_place:
                self.vectorized_last = False
                self.path_last = "in_place"
                try:
                    total = self._in_place(all_origin, directions, fixed, coeffs, self.cache_products)
                except Exception as err:
                    if not self.cache_products:
                        raise
                    total = self._in_place(all_origin, directions, fixed, coeffs, False)  # its error, if any
                    _warn_once(
                        "landscape: cached first-layer products switched off, the forward did not run "
                        f"with them ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                    )
                done = coeffs.shape[0]
            elif self.vectorize:
                self.path_last = "vmap"
                leaves = {n: all_origin[n].detach().requires_grad_(True) for n in names}
                measure = self._point_fn(leaves, {}, {**fixed, **buf_origin})
                chunk = self._chunk(measure, coeffs, device)
                self.last_chunk_size = chunk
                batched = torch.func.vmap(batched_loss_at, in_dims=(0, None), randomness="same")
                try:
                    while done < coeffs.shape[0]:
                        part = coeffs[done : done + chunk]
                        acc = torch.zeros(part.shape[0], dtype=torch.float64)
                        for i, batch in enumerate(self.batches):
                            self._seed(i)
                            if affine is not None:
                                affine.batch = i
                            with affine if affine is not None else contextlib.nullcontext():
                                values = batched(part, batch)
                            acc += values.detach().to("cpu", torch.float64) * self.weights[i]
                        total[done : done + part.shape[0]] = acc
                        done += part.shape[0]
                except Exception as err:  # vmap cannot run this loss: say why once, then loop
                    _warn_once(
                        f"landscape: evaluating the loss point by point, torch.func.vmap cannot run it "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                    )
                    self.vectorized_last = False
            if done < coeffs.shape[0]:
                total[done:] = self._loop(loss_at, coeffs, done)
        weight = sum(self.weights)
        if self.distributed:
            dev = device
            packed = torch.cat([total, torch.tensor([weight], dtype=torch.float64)]).to(dev)
            torch.distributed.all_reduce(packed)
            packed = packed.cpu()
            total, weight = packed[:-1], float(packed[-1])
        return total / weight


def state_tensors(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The origin of a grid at ``model``: its trainable weights and its buffers, by name, detached."""
    weights = {n: p.detach() for n, p in named_trainable(model).items()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    return weights, buffers


def check_finite(losses: Tensor, where: str) -> None:
    """A :class:`NonFiniteError` if no loss in ``losses`` is finite (a few non-finite points are data)."""
    if losses.numel() and not bool(torch.isfinite(losses).any()):
        raise NonFiniteError(f"the loss is not finite at any point of the {where}.")


def linspace(span: Any, steps: int, name: str = "span") -> Tensor:
    """``steps`` float64 points from ``span[0]`` to ``span[1]`` after checking both."""
    if not isinstance(span, (tuple, list)) or len(span) != 2:
        raise ValueError(f"`{name}` must be a pair (low, high) of finite numbers, got {span!r}.")
    lo, hi = span
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in span):
        raise ValueError(f"`{name}` must be a pair (low, high) of finite numbers, got {span!r}.")
    if not lo < hi:
        raise ValueError(f"`{name}` must have low < high, got {span!r}.")
    grid = torch.linspace(float(lo), float(hi), steps, dtype=torch.float64)
    # A symmetric span holds the centre exactly (linspace leaves ~1e-17 there).
    return torch.where(grid.abs() <= 1e-12 * (hi - lo), 0.0, grid)


__all__ = ["GridEvaluator", "check_finite", "linspace", "state_tensors"]
