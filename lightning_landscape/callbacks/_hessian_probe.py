r"""The Trainer-free Hessian probe: one operator per probe, handed to every quantity asked for.

:class:`HessianProbe` is the engine every curvature monitor shares (the Lightning adapters decide when, on
which batches and where the numbers go). :meth:`HessianProbe.run` takes a module, ``loss_fn(model, batch)``
and fixed batches, builds one :class:`~lightning_landscape.curvature.HessianOperator` (one gradient graph) of
:math:`H = \nabla^2_\theta L` for :math:`L = \sum_b \frac{|b|}{\sum_{b'} |b'|} \ell_b` (the block
:math:`H_{SS}` of ``params``), runs on it the top-``k`` (and bottom) eigenvalues, the Hutchinson trace and the
spectral density, then one cold-started operator per diagonal block, and returns plain numbers
(:class:`HessianProbeResult`), the model left exactly as found. With ``warm_start`` each run starts from the
previous run's Ritz vectors (:attr:`HessianProbe.warm_vectors`). Under ``torch.distributed`` the operator
all-reduces its products (every rank gets the same values); pyhessian's are not, so a caller must not run
``backend="pyhessian"`` on several ranks. Nothing here imports Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_landscape._torch import BatchNormBase, DropoutBase
from lightning_landscape.callbacks._probe_results import Extremes, HessianProbeResult, extremes, result_values
from lightning_landscape.curvature import (
    EigenResult,
    HessianOperator,
    HvpMethod,
    LossFn,
    NonFiniteError,
    ParamSelection,
    hessian_eigenvalues,
    hutchinson,
    lanczos,
    power_iteration,
    select_parameters,
    slq,
)
from lightning_landscape.curvature._checks import DEFAULT_TOL, check_choice, check_int, check_positive
from lightning_landscape.curvature.operators._strategies import refuse_under_fsdp, refuse_unsupported
from lightning_landscape.curvature.operators.hessian import HVP_METHODS

Backend = Literal["lanczos", "power", "pyhessian"]
Memory = Literal["auto", "reuse", "recompute"]


def mode_dependent_kinds(model: nn.Module) -> list[str]:
    """Names of the layer types of ``model`` that compute something else in train mode (sorted, once each).

    Dropout with ``p > 0`` and BatchNorm that tracks running statistics: for such a model the eval-mode
    Hessian (the probe's default) can differ a lot from the train-mode one.

    Example::

        >>> mode_dependent_kinds(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1), nn.Dropout(0.0)))
        ['Dropout']
    """
    kinds = set()
    for module in model.modules():
        if (isinstance(module, DropoutBase) and module.p > 0) or (
            isinstance(module, BatchNormBase) and module.track_running_stats
        ):
            kinds.add(type(module).__name__)
    return sorted(kinds)


class HessianProbe:
    r"""Extreme eigenvalues, trace and spectral density of a model's Hessian, from one operator per probe.

    Args:
        k: How many of the largest eigenvalues.
        smallest: Also the smallest eigenvalue (negative at a saddle).
        trace: Also the Hutchinson estimate of the trace with ``trace_samples`` Rademacher vectors.
        trace_samples: Rademacher vectors for the trace estimate.
        density: Also the spectral density (stochastic Lanczos quadrature).
        density_iter: Lanczos steps per run of the spectral density, ``>= 2``.
        density_runs: Independent runs averaged in the spectral density.
        tol: Relative tolerance of each eigenvalue, ``> 0``.
        backend: ``"lanczos"``, ``"power"`` or ``"pyhessian"`` (largest only, all trainable parameters, one
            process; needs the ``pyhessian`` extra).
        max_iter: Most Lanczos steps (power/pyhessian: iterations per eigenvalue); ``None`` for the default.
        train_mode: ``True``: the model's own train/eval flags; ``False`` or ``None``: eval mode.
        memory: ``"auto"``, ``"reuse"`` or ``"recompute"``: keep the gradient graph between products or not
            (see :class:`~lightning_landscape.curvature.HessianOperator`).
        seed: Seeds the solvers' start vectors (and random layers in train mode).
        warm_start: Start each run from the previous run's Ritz vectors (Lanczos and power backends).
        hvp: How products are taken: ``"auto"``, ``"double_backward"``, ``"forward_over_reverse"`` or
            ``"finite_difference"`` (see :class:`~lightning_landscape.curvature.HessianOperator`).
        params: The block of these parameters only: name prefixes (a list) or one regex (a str); ``None``
            for every trainable parameter.
        blocks: Name prefixes, each measured as its own diagonal block (top-``k`` and smallest).

    Raises:
        ValueError: If an argument is invalid, or ``backend="pyhessian"`` is combined with ``smallest``,
            ``params`` or ``blocks`` (pyhessian computes only the largest eigenvalues of the full Hessian).

    Example::

        >>> model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
        >>> x = torch.randn(16, 2)
        >>> loss_fn = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])
        >>> probe = HessianProbe(k=2, smallest=True, trace=True, trace_samples=10, blocks=["2"])
        >>> result = probe.run(model, loss_fn, [(x, x.sum(1, keepdim=True))])
        >>> len(result.eigen.largest), result.eigen.smallest <= result.eigen.largest[-1]
        (2, True)
        >>> list(result.blocks), probe.warm_vectors.shape  # the top-2 and bottom-2 Ritz vectors
        (['2'], torch.Size([4, 13]))
    """

    def __init__(
        self,
        k: int = 1,
        smallest: bool = False,
        trace: bool = False,
        trace_samples: int = 100,
        density: bool = False,
        density_iter: int = 100,
        density_runs: int = 1,
        tol: float = DEFAULT_TOL,
        backend: Backend = "lanczos",
        max_iter: int | None = None,
        train_mode: bool | None = False,
        memory: Memory = "auto",
        seed: int = 0,
        warm_start: bool = True,
        params: str | list[str] | None = None,
        blocks: list[str] | None = None,
        hvp: HvpMethod = "auto",
    ) -> None:
        check_int("k", k)
        check_choice("hvp", hvp, HVP_METHODS)
        check_int("trace_samples", trace_samples)
        check_int("density_iter", density_iter, minimum=2)
        check_int("density_runs", density_runs)
        check_int("max_iter", max_iter, optional=True)
        check_int("seed", seed, minimum=0)
        check_positive("tol", tol)
        check_choice("backend", backend, ("lanczos", "power", "pyhessian"))
        if backend == "pyhessian" and smallest:
            raise ValueError(
                "`backend`='pyhessian' computes the largest eigenvalues only: use smallest=False"
            )
        check_choice("memory", memory, ("auto", "reuse", "recompute"))
        if train_mode not in (None, False, True):
            raise ValueError(f"`train_mode` must be None, False or True, got {train_mode!r}.")
        if params is not None and not (
            (isinstance(params, str) and params)
            or (isinstance(params, list) and all(isinstance(p, str) for p in params) and params)
        ):
            raise ValueError(
                "`params` must be None, a regex (str) or a non-empty list of module/parameter names, "
                f"got {params!r}."
            )
        if blocks is not None and (not isinstance(blocks, list) or not blocks):
            raise ValueError(f"`blocks` must be None or a non-empty list of module names, got {blocks!r}.")
        if backend == "pyhessian" and (params is not None or blocks is not None):
            given = " and ".join(
                f"`{name}`={value!r}" for name, value in (("params", params), ("blocks", blocks)) if value
            )
            raise ValueError(
                f"{given} cannot be used with `backend`='pyhessian': pyhessian differentiates by every "
                "trainable parameter, so it has no parameter blocks. Use backend='lanczos' (or 'power') for "
                "`params`/`blocks`, or drop them."
            )
        self.k = k
        self.smallest = bool(smallest)
        self.trace = bool(trace)
        self.trace_samples = trace_samples
        self.density = bool(density)
        self.density_iter = density_iter
        self.density_runs = density_runs
        self.tol = float(tol)
        self.backend = backend
        self.max_iter = max_iter
        self.train_mode = train_mode
        self.memory = memory
        self.hvp = hvp
        self.seed = seed
        self.warm_start = bool(warm_start)
        self.params = params
        self.blocks = blocks
        self.warm_vectors: Tensor | None = None
        """The last successful run's Ritz vectors, ``[j, n]`` on the model's device (top-k, then bottom-k
        with ``smallest``): the next run's start. ``None`` before the first run, without ``warm_start`` and
        with pyhessian; dropped when the number of probed parameters changes."""

    #: ``(attribute, value before the first probe)`` of the int counters a subclass keeps in its checkpoint.
    checkpointed: tuple[tuple[str, int], ...] = ()

    def state_dict(self) -> dict[str, Any]:
        """The :attr:`checkpointed` counters (keys without a leading ``_``) and :attr:`warm_vectors` (on the
        CPU, so the checkpoint loads on any device; moved back at the next run)."""
        state: dict[str, Any] = {name.lstrip("_"): getattr(self, name) for name, _ in self.checkpointed}
        if self.warm_vectors is not None:
            state["warm_vectors"] = self.warm_vectors.detach().cpu().clone()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (absent keys: the values before the first probe)."""
        for name, default in self.checkpointed:
            setattr(self, name, int(state_dict.get(name.lstrip("_"), default)))
        warm = state_dict.get("warm_vectors", None)
        self.warm_vectors = warm.detach().clone() if isinstance(warm, Tensor) and warm.dim() == 2 else None

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model the selections do not fit, before any work: run it once per model (e.g. at setup).

        Raises:
            ValueError: If ``params`` or an entry of ``blocks`` selects no trainable parameter of ``model``,
                or ``k`` is not below the number of parameters it selects.
        """
        selections = [("params", self.params)] + [("blocks", [block]) for block in self.blocks or []]
        for argument, selection in selections:
            try:
                size = sum(p.numel() for _, p in select_parameters(model, selection))
            except ValueError as err:
                raise ValueError(str(err).replace("`params`", f"`{argument}`", 1)) from err
            if self.k >= size:
                raise ValueError(
                    f"`k`={self.k} must be below the {size} parameters of `{argument}`={selection!r} "
                    f"(at most k={size - 1})."
                )

    def check_sharded(self, model: nn.Module | None = None) -> None:
        """Refuse what cannot run on FSDP2 parameters (products there are finite differences of sharded
        gradients): the options at once, and with ``model`` (once sharded) a layout other than plain FSDP.

        Raises:
            ValueError: for ``backend="pyhessian"``, an ``hvp`` other than ``"auto"``/``"finite_difference"``,
                or trainable parameters not all sharded by ``fully_shard`` over all ranks.
        """
        refuse_under_fsdp(self.hvp, self.backend)
        if model is not None:
            refuse_unsupported(model, self.hvp)

    def run(self, model: nn.Module, loss_fn: LossFn, batches: Sequence[Any]) -> HessianProbeResult:
        """One probe at the model's current weights: every quantity asked for, from one operator.

        Args:
            model: the model; its trainable parameters (those ``params`` selects) are the variables.
            loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
            batches: a non-empty list of batches, already on the model's device.

        Returns:
            A :class:`HessianProbeResult`; the Ritz vectors are kept in :attr:`warm_vectors` for the next run.

        Raises:
            NonFiniteError: If the loss, a Hessian-vector product or a value is not finite (then
                :attr:`warm_vectors` stays as it was).
        """
        warm = self.warm_start and self.backend != "pyhessian"
        op: HessianOperator | None = None
        products = 0
        try:
            if self.backend == "pyhessian":
                # pyhessian builds its own graph; ours serves the trace and density only.
                result = hessian_eigenvalues(
                    model,
                    loss_fn,
                    batches,
                    k=self.k,
                    tol=self.tol,
                    max_iter=self.max_iter,
                    backend="pyhessian",
                    train_mode=bool(self.train_mode),
                    seed=self.seed,
                )
                products += result.num_products
            # One operator (one gradient graph) per probe, handed to every algorithm below.
            if self.backend != "pyhessian" or self.trace or self.density:
                op = self._operator(model, loss_fn, batches, self.params)
            if self.backend != "pyhessian":
                assert op is not None
                result = self._solve(op, self._start_vectors(op) if warm else None, warm)
            trace = None
            if self.trace:
                assert op is not None
                trace = hutchinson(op, num_samples=self.trace_samples, seed=self.seed).trace
            density = None
            if self.density:
                assert op is not None
                density = slq(op, num_iter=self.density_iter, num_runs=self.density_runs, seed=self.seed)
            blocks: dict[str, Extremes] = {}
            for block in self.blocks or []:
                block_op = self._operator(model, loss_fn, batches, [block])
                try:
                    blocks[block] = extremes(self._solve(block_op, None, False), self.smallest)
                finally:
                    products += block_op.num_products
                    block_op.close()
            products += 0 if op is None else op.num_products
        finally:
            if op is not None:
                op.close()
        probe = HessianProbeResult(extremes(result, self.smallest), blocks, trace, density, products)
        values = result_values(probe)
        if not all(math.isfinite(v) for v in values.values()):
            raise NonFiniteError(f"non-finite Hessian values {values}")
        if warm and result.eigenvectors is not None:
            vectors = [result.eigenvectors]
            if result.smallest_eigenvectors is not None:
                vectors.append(result.smallest_eigenvectors)
            self.warm_vectors = torch.cat(vectors).detach()
        return probe

    def _operator(
        self, model: nn.Module, loss_fn: LossFn, batches: Sequence[Any], params: ParamSelection
    ) -> HessianOperator:
        return HessianOperator(
            model,
            loss_fn,
            batches,
            memory=self.memory,
            train_mode=bool(self.train_mode),
            seed=self.seed,
            params=params,
            hvp=self.hvp,
        )

    def _solve(self, op: HessianOperator, v0: Tensor | None, vectors: bool) -> EigenResult:
        solver = lanczos if self.backend == "lanczos" else power_iteration
        return solver(
            op,
            k=self.k,
            which="both" if self.smallest else "largest",
            tol=self.tol,
            max_iter=self.max_iter,
            seed=self.seed,
            return_eigenvectors=vectors,
            v0=v0,
        )

    def _start_vectors(self, op: HessianOperator) -> Tensor | None:
        """The warm start for this run: the last run's Ritz vectors, if they still fit the operator.

        Under DDP every rank holds the same vectors: they come out of identical Lanczos runs on all-reduced
        products (or from the same checkpoint), so every rank starts from the same ``v0``.
        """
        vectors = self.warm_vectors
        if vectors is None:
            return None
        if vectors.shape[-1] != op.num_params:
            # The trainable parameters changed (e.g. layers frozen or unfrozen): the vectors mean nothing now.
            self.warm_vectors = None
            return None
        vectors = vectors.to(device=op.device, dtype=op.dtype)
        self.warm_vectors = vectors
        return vectors
