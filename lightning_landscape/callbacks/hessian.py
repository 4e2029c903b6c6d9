r"""Extreme Hessian eigenvalues (and optionally trace and spectral density) of the training loss during
fit."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_landscape._torch import BatchNormBase, DropoutBase, is_compiled_wrapper
from lightning_landscape.callbacks import tags as _tags
from lightning_landscape.callbacks._checks import check_choice, check_int, check_positive
from lightning_landscape.callbacks._probe import (
    LossFn,
    MethodLoss,
    ProbeLoss,
    draw_batches,
    epoch_end_logging_step,
    logging_step,
    probe_dataloader,
    resolve_loss_fn,
)
from lightning_landscape.callbacks._tensorboard import add_density, log_scalars, write_layout
from lightning_landscape.curvature import (
    HessianOperator,
    NonFiniteError,
    hessian_eigenvalues,
    hutchinson,
    lanczos,
    power_iteration,
    select_parameters,
    slq,
)
from lightning_landscape.curvature._checks import DEFAULT_TOL


def _mode_dependent(module: nn.Module) -> bool:
    """Whether ``module`` computes something else in train mode (so the eval-mode Hessian differs)."""
    if isinstance(module, DropoutBase):
        return module.p > 0
    if isinstance(module, BatchNormBase):
        return module.track_running_stats
    return False


def converged_flags(result: Any, count: int, smallest: bool = False) -> list[bool]:
    """Per-value convergence of ``count`` values of an eigen result (one flag for all if it has only one)."""
    flags = getattr(result, "smallest_converged" if smallest else "value_converged", None)
    if flags is None:
        flags = getattr(result, "converged", False)
    if isinstance(flags, Tensor):
        flags = flags.tolist()
    if isinstance(flags, (list, tuple)):
        values = [bool(f) for f in flags][:count]
        return values + [all(values)] * (count - len(values))
    return [bool(flags)] * count


class HessianEigenMonitor(Callback):
    r"""Log the top-``k`` Hessian eigenvalues of the training loss at the current weights, on a schedule.

    With :math:`L(\theta) = \sum_b \frac{|b|}{\sum_{b'} |b'|} \ell_b(\theta)` the batch-size-weighted mean
    loss over ``num_batches`` fixed probe batches, the monitor logs the largest eigenvalues
    :math:`\lambda_1 \ge \dots \ge \lambda_k` of :math:`H = \nabla^2_\theta L(\theta_t)` (the Ritz values of
    Lanczos, converged to ``tol * |lambda|``), optionally :math:`\lambda_{\min}`, :math:`\operatorname{tr} H`
    (Hutchinson) and the spectral density (stochastic Lanczos quadrature), at the iterate :math:`\theta_t`
    right after the optimizer step.

    The probe batches are the first ``num_batches`` batches of a fresh pass over the train (or ``"val"``)
    dataloader, drawn once when training starts under ``seed`` and held fixed, so the values describe one
    empirical risk along the trajectory (and a resumed run probes the same batches). Drawing them and probing
    touch no RNG stream, gradient, train/eval flag, optimizer or logged metric: training is bit-identical
    with and without the monitor. The loss is the module's ``training_step`` (returning the loss or a dict
    with ``"loss"``) or ``loss_fn``, evaluated as a probe: ``self.log`` silenced, and ``manual_backward``,
    ``toggle_optimizer`` and the ``step``/``zero_grad`` of ``self.optimizers()`` doing nothing, so even a
    ``loss_fn`` that runs a manual-optimization ``training_step`` cannot move the weights. A module with
    ``automatic_optimization = False`` and no ``loss_fn`` is refused in ``setup`` (pass ``loss_fn``, e.g. the
    discriminator's loss of a GAN).

    Stated behaviour (what the probed Hessian is):

    * **Eval mode** by default: BatchNorm uses its running statistics, Dropout is off. For such modules the
      train-mode Hessian can differ a lot (several-fold in ``eig_1`` on small BatchNorm CNNs); with
      ``train_mode`` left at ``None`` the monitor warns once in ``setup`` when the module has
      BatchNorm/Dropout. ``train_mode=False`` keeps eval mode silently, ``True`` uses the module's
      own flags (BatchNorm buffers are still left untouched).
    * **Autocast off**, in the parameters' dtype: under ``precision="bf16-mixed"`` / ``"16-mixed"`` the probe
      runs in float32 (fp32 parameters), not in the autocast dtype of the training step.
    * **torch.compile** directives are ignored during the probe
      (``torch.compiler.set_stance("force_eager")``): a compiled module or ``self.net = torch.compile(net)``
      is probed through the eager code it was compiled from, since aot_autograd graphs have no double
      backward. Training still runs compiled.
    * **Trainable parameters** the loss does not use (e.g. the generator under a discriminator-only loss, an
      unused head) have zero rows: they add exact zero eigenvalues, so ``eig_min`` is ``<= 0``. Select the
      parameters with ``params`` to leave them out. Frozen parameters (``requires_grad=False``) are constants.
    * **Convergence**: every probe logs ``hessian/converged`` (1 when every logged value met ``tol``, else 0)
      and warns once the first time a value does not converge; ``unconverged="log"`` (default) logs such
      values anyway, ``"skip"`` leaves them out (per value).

    Values go to every logger under ``hessian/eig_1`` ... ``hessian/eig_k``, ``hessian/eig_min``,
    ``hessian/trace``, ``hessian/converged``, ``hessian/num_products`` (and a ``hessian/density`` TensorBoard
    histogram), at the same step as the module's metrics of that batch, and to ``trainer.callback_metrics``
    through ``pl_module.log(..., logger=False)`` so they can be monitored. With ``name`` they are
    ``hessian/<name>/...`` (two monitors, e.g. on the train and the val probe, then write two series, two
    TensorBoard layout categories and two checkpoint states). ``params`` restricts the probed Hessian to the
    block :math:`H_{SS}` of the selected parameters; each entry of ``blocks`` adds the top-``k`` (and
    ``eig_min``) of its own diagonal block under ``hessian/<block>/eig_i`` (one more operator per block and
    probe, cold-started). Under DDP every rank probes its own shard of the probe batches (its distributed
    sampler's), the products are all-reduced, all ranks hold the same values and rank zero writes them. A
    probe whose loss or products are not finite is skipped with one warning.

    With ``warm_start`` (default) each probe's Lanczos (or power) iteration starts from the Ritz vectors of
    the previous probe (top-``k``, and bottom-``k`` with ``smallest``) plus a small seeded random part: the
    weights move little between probes, so the iteration needs fewer products, and the values are as
    accurate as from a random start (each is still held to ``tol``). The vectors (``k``, or ``2k`` with
    ``smallest``, each the size of the trainable parameters) live on the module's device and in this
    callback's ``state_dict``, so a resumed run continues exactly as the uninterrupted one; they are dropped
    when the number of trainable parameters changes. ``backend="pyhessian"`` always starts cold.

    Args:
        k: How many of the largest eigenvalues.
        every_n_steps: Probe after every this many optimizer steps; ``None`` for none.
        every_n_epochs: Probe at the end of every this many training epochs; ``None`` for none.
        smallest: Also log the smallest eigenvalue ``hessian/eig_min`` (negative at a saddle).
        trace: Also log the Hutchinson estimate of the trace with ``trace_samples`` probe vectors.
        trace_samples: Rademacher vectors for the trace estimate.
        density: Also write the spectral density as a TensorBoard histogram ``hessian/density``.
        density_iter: Lanczos steps per run of the spectral density.
        density_runs: Independent runs averaged in the spectral density.
        num_batches: How many batches of the dataloader form the probe.
        dataloader: ``"train"`` or ``"val"``: where the probe batches come from.
        loss_fn: Import path ``"pkg.module:function"`` (or ``"pkg.module.function"``) of
            ``loss_fn(model, batch) -> Tensor``, or ``"self.<method>"`` for ``module.<method>(batch)`` (pick
            one loss of several, e.g. ``"self.d_loss"``); ``None`` uses the module's ``training_step``.
        tol: Relative tolerance of each eigenvalue, ``> 0``.
        backend: ``"lanczos"``, ``"power"`` or ``"pyhessian"`` (largest only; needs the ``pyhessian`` extra).
        max_iter: Most Lanczos steps (power/pyhessian: iterations per eigenvalue); ``None`` for the default.
        train_mode: ``True``: evaluate the loss in the module's own train/eval mode; ``False``: in eval mode;
            ``None`` (default): eval mode, with one warning if the module has BatchNorm/Dropout.
        memory: ``"auto"``, ``"reuse"`` or ``"recompute"``: keep the gradient graph between products or not.
        seed: Seeds the probe batches' draw and the solvers' start vectors.
        warm_start: Start each probe from the previous probe's Ritz vectors (Lanczos and power backends).
        unconverged: ``"log"`` unconverged values anyway (``hessian/converged`` says so) or ``"skip"`` them.
        name: Tags under ``hessian/<name>/`` (letters, digits, ``_``, ``.``, ``-``); also part of the
            ``state_key``.
        params: Probe only the block of these parameters: module/parameter name prefixes (a list, e.g.
            ``["net.0"]``) or one regex on the parameter names (a str); ``None`` for all trainable ones.
        blocks: Module/parameter name prefixes, each logged as its own diagonal block
            ``hessian/<block>/eig_i`` (per-layer curvature), in addition to the main probe.

    Raises:
        ValueError: If an argument is invalid (checked in ``__init__``).
        MisconfigurationException: In ``setup`` under FSDP, DeepSpeed or model-parallel strategies, or for a
            manual-optimization module without ``loss_fn``.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_landscape import HessianEigenMonitor
        >>> monitor = HessianEigenMonitor(k=3, every_n_steps=100, smallest=True)
        >>> per_layer = HessianEigenMonitor(every_n_steps=100, blocks=["net.0", "net.2"], name="layers")
        >>> trainer = Trainer(callbacks=[monitor, per_layer], logger=False, enable_checkpointing=False)
        >>> monitor.state_key != per_layer.state_key
        True
    """

    _landscape_family = _tags.HESSIAN_SECTION

    def __init__(
        self,
        k: int = 1,
        every_n_steps: int | None = 100,
        every_n_epochs: int | None = None,
        smallest: bool = False,
        trace: bool = False,
        trace_samples: int = 100,
        density: bool = False,
        density_iter: int = 100,
        density_runs: int = 1,
        num_batches: int = 1,
        dataloader: Literal["train", "val"] = "train",
        loss_fn: str | None = None,
        tol: float = DEFAULT_TOL,
        backend: Literal["lanczos", "power", "pyhessian"] = "lanczos",
        max_iter: int | None = None,
        train_mode: bool | None = None,
        memory: Literal["auto", "reuse", "recompute"] = "auto",
        seed: int = 0,
        warm_start: bool = True,
        unconverged: Literal["log", "skip"] = "log",
        name: str | None = None,
        params: str | list[str] | None = None,
        blocks: list[str] | None = None,
    ) -> None:
        check_int("k", k)
        check_int("every_n_steps", every_n_steps, optional=True)
        check_int("every_n_epochs", every_n_epochs, optional=True)
        if every_n_steps is None and every_n_epochs is None:
            raise ValueError("`every_n_steps` and `every_n_epochs` are both None: set at least one of them")
        check_int("trace_samples", trace_samples)
        check_int("density_iter", density_iter, minimum=2)
        check_int("density_runs", density_runs)
        check_int("num_batches", num_batches)
        check_int("max_iter", max_iter, optional=True)
        check_int("seed", seed, minimum=0)
        check_choice("dataloader", dataloader, ("train", "val"))
        check_positive("tol", tol)
        check_choice("backend", backend, ("lanczos", "power", "pyhessian"))
        if backend == "pyhessian" and smallest:
            raise ValueError(
                "`backend`='pyhessian' computes the largest eigenvalues only: use smallest=False"
            )
        check_choice("memory", memory, ("auto", "reuse", "recompute"))
        if train_mode not in (None, False, True):
            raise ValueError(f"`train_mode` must be None, False or True, got {train_mode!r}.")
        check_choice("unconverged", unconverged, ("log", "skip"))
        _tags.check_name(name)
        if params is not None and not (
            (isinstance(params, str) and params)
            or (isinstance(params, list) and all(isinstance(p, str) for p in params) and params)
        ):
            raise ValueError(
                "`params` must be None, a regex (str) or a non-empty list of module/parameter names, "
                f"got {params!r}."
            )
        if blocks is not None:
            if not isinstance(blocks, list) or not blocks:
                raise ValueError(
                    f"`blocks` must be None or a non-empty list of module names, got {blocks!r}."
                )
            for block in blocks:
                _tags.check_name(block, "blocks")
        self.k = k
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.smallest = bool(smallest)
        self.trace = bool(trace)
        self.trace_samples = trace_samples
        self.density = bool(density)
        self.density_iter = density_iter
        self.density_runs = density_runs
        self.num_batches = num_batches
        self.dataloader = dataloader
        self.loss_fn = loss_fn
        self.tol = float(tol)
        self.backend = backend
        self.max_iter = max_iter
        self.train_mode = train_mode
        self.unconverged = unconverged
        self.name = name
        self.params = params
        self.blocks = blocks
        self.memory = memory
        self.seed = seed
        self.warm_start = bool(warm_start)
        self._loss_fn: LossFn | None = resolve_loss_fn(loss_fn) if loss_fn is not None else None
        self._batches: list[Any] | None = None
        self._last_probe_step = -1
        self.num_probes = 0
        self.num_skipped = 0
        self.total_products = 0
        # Ritz vectors of the last probe, [j, n] on the module's device: the next probe's start.
        self._warm_vectors: Tensor | None = None
        self._state_key: tuple[tuple[Any, ...], str] | None = None
        self.num_unconverged = 0
        self._warned_mode = False

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads the key at every hook call of every step (to name profiler actions): build the
        # string only when an argument it depends on has changed.
        args = (self.k, self.every_n_steps, self.every_n_epochs, self.dataloader, self.num_batches, self.name)
        if self._state_key is None or self._state_key[0] != args:
            # An unnamed monitor keeps the key of earlier versions, so their checkpoints still resume.
            named = {} if self.name is None else {"name": self.name}
            key = self._generate_state_key(
                **named,
                k=self.k,
                every_n_steps=self.every_n_steps,
                every_n_epochs=self.every_n_epochs,
                dataloader=self.dataloader,
                num_batches=self.num_batches,
            )
            self._state_key = (args, key)
        return self._state_key[1]

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)):
            raise MisconfigurationException(
                f"HessianEigenMonitor does not support sharded models ({type(trainer.strategy).__name__}): "
                "Hessian-vector products need every parameter on every rank. Use strategy='ddp' or a single "
                "device."
            )
        if isinstance(self._loss_fn, MethodLoss):
            self._loss_fn.check(pl_module)
        selections = [("params", self.params)] + [("blocks", [block]) for block in self.blocks or []]
        for argument, selection in selections:
            try:
                size = sum(p.numel() for _, p in select_parameters(pl_module, selection))
            except ValueError as err:
                raise MisconfigurationException(
                    f"HessianEigenMonitor: {str(err).replace('`params`', f'`{argument}`', 1)}"
                ) from err
            if self.k >= size:
                raise MisconfigurationException(
                    f"HessianEigenMonitor: `k`={self.k} must be below the {size} parameters of "
                    f"`{argument}`={selection!r} (at most k={size - 1})."
                )
        if not pl_module.automatic_optimization and self._loss_fn is None:
            raise MisconfigurationException(
                f"HessianEigenMonitor cannot probe {type(pl_module).__name__}.training_step: it uses "
                "manual optimization (automatic_optimization=False), so its training_step runs backward and "
                "steps the optimizers itself. Pass the loss to probe as `loss_fn`: a method of the module "
                "(`loss_fn='self.d_loss'`, e.g. a GAN's discriminator loss) or an import path "
                "`loss_fn='pkg.module:function'` of loss_fn(model, batch)."
            )
        compiled = any(is_compiled_wrapper(m) for m in pl_module.modules())
        if compiled and not hasattr(torch.compiler, "set_stance"):
            raise MisconfigurationException(  # pragma: no cover - torch < 2.6
                "HessianEigenMonitor: this torch cannot run compiled modules eagerly (no "
                "torch.compiler.set_stance), and compiled graphs have no double backward. Upgrade torch or "
                "probe the uncompiled module."
            )
        if self.train_mode is None and not self._warned_mode:
            kinds = sorted({type(m).__name__ for m in pl_module.modules() if _mode_dependent(m)})
            if kinds:
                self._warned_mode = True
                rank_zero_warn(
                    f"HessianEigenMonitor: {type(pl_module).__name__} has {', '.join(kinds)}; the probe "
                    "measures the Hessian in eval mode (running statistics, no dropout), which can differ a "
                    "lot from the train-mode one. Pass `train_mode=False` to keep eval mode without this "
                    "warning, or `train_mode=True` for the module's own train/eval flags.",
                    category=UserWarning,
                )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        write_layout(trainer)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = probe_dataloader(trainer, self.dataloader)
        self._batches = draw_batches(
            loader, self.num_batches, self.seed, to_device=trainer.strategy.batch_to_device
        )

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps is None or step == 0 or step % self.every_n_steps != 0:
            return
        if step != self._last_probe_step:
            self._probe(trainer, pl_module, logging_step(trainer))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs is None or (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        if trainer.global_step != self._last_probe_step:
            self._probe(trainer, pl_module, epoch_end_logging_step(trainer))

    def _probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        """One measurement at the current weights; all ranks run it (the products are all-reduced)."""
        if self._batches is None:
            return
        self._last_probe_step = trainer.global_step
        loss_fn = ProbeLoss(self._loss_fn)
        train_mode = bool(self.train_mode)
        warm = self.warm_start and self.backend != "pyhessian"
        op: HessianOperator | None = None
        products = 0
        try:
            if self.backend == "pyhessian":
                # pyhessian builds its own graph; ours serves the trace and density only.
                result = hessian_eigenvalues(
                    pl_module,
                    loss_fn,
                    self._batches,
                    k=self.k,
                    tol=self.tol,
                    max_iter=self.max_iter,
                    backend="pyhessian",
                    train_mode=train_mode,
                    seed=self.seed,
                    params=self.params,
                )
                products += result.num_products
            # One operator (one gradient graph) per probe, handed to every algorithm below.
            if self.backend != "pyhessian" or self.trace or self.density:
                op = self._operator(pl_module, loss_fn, self.params)
            if self.backend != "pyhessian":
                assert op is not None
                result = self._solve(op, self._start_vectors(op) if warm else None, warm)
            metrics = self._eigen_metrics(trainer, result)
            if self.trace:
                assert op is not None
                metrics[self._tag(_tags.TRACE)] = hutchinson(
                    op, num_samples=self.trace_samples, seed=self.seed
                ).trace
            sd = None
            if self.density:
                assert op is not None
                sd = slq(op, num_iter=self.density_iter, num_runs=self.density_runs, seed=self.seed)
            for block in self.blocks or []:
                block_op = self._operator(pl_module, loss_fn, [block])
                try:
                    metrics.update(self._eigen_metrics(trainer, self._solve(block_op, None, False), block))
                finally:
                    products += block_op.num_products
                    block_op.close()
            # Every product of our operators (eigenvalues, trace, density, blocks), plus pyhessian's own.
            products += 0 if op is None else op.num_products
            if not all(math.isfinite(v) for v in metrics.values()):
                raise NonFiniteError(f"non-finite Hessian values {metrics}")
        except NonFiniteError as err:
            self.num_skipped += 1
            rank_zero_warn(
                f"HessianEigenMonitor: skipped the probe at step {trainer.global_step}, the loss or a "
                f"Hessian-vector product is not finite ({err}). Nothing was logged for it; training goes on.",
                category=RuntimeWarning,
            )
            return
        finally:
            if op is not None:
                op.close()
        if warm and result.eigenvectors is not None:
            vectors = [result.eigenvectors]
            if result.smallest_eigenvectors is not None:
                vectors.append(result.smallest_eigenvectors)
            self._warm_vectors = torch.cat(vectors).detach()
        self.num_probes += 1
        self.total_products += products
        metrics[self._tag(_tags.NUM_PRODUCTS)] = float(products)
        log_scalars(trainer, metrics, step)
        for tag, value in metrics.items():
            pl_module.log(tag, value, logger=False, sync_dist=False)
        if sd is not None:
            grid, dens = sd.on_grid()
            add_density(trainer, self._tag(_tags.DENSITY), grid, dens, float(sd.num_params), step)

    def _operator(self, pl_module: pl.LightningModule, loss_fn: ProbeLoss, params: Any) -> HessianOperator:
        return HessianOperator(
            pl_module,
            loss_fn,
            self._batches,  # type: ignore[arg-type]
            memory=self.memory,
            train_mode=bool(self.train_mode),
            seed=self.seed,
            params=params,
        )

    def _solve(self, op: HessianOperator, v0: Tensor | None, vectors: bool) -> Any:
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

    def _tag(self, quantity: str, block: str | None = None) -> str:
        return _tags.hessian_tag(quantity, self.name, block)

    def _eigen_metrics(self, trainer: pl.Trainer, result: Any, block: str | None = None) -> dict[str, float]:
        """The eigenvalue tags of one result and ``converged``; unconverged values dropped if asked."""
        values = [float(v) for v in result.eigenvalues]
        flags = converged_flags(result, len(values))
        named = [(_tags.hessian_eig_tag(i + 1, self.name, block), v) for i, v in enumerate(values)]
        if self.smallest and result.smallest is not None:
            named.append((self._tag(_tags.EIG_MIN, block), float(result.smallest[0])))
            flags.append(converged_flags(result, 1, smallest=True)[0])
        if not all(flags):
            self.num_unconverged += 1
            if self.num_unconverged == 1:
                bad = [tag for (tag, _), ok in zip(named, flags, strict=True) if not ok]
                action = "logged anyway" if self.unconverged == "log" else "not logged"
                rank_zero_warn(
                    f"HessianEigenMonitor: at step {trainer.global_step} {bad} did not converge to "
                    f"tol={self.tol} within max_iter={self.max_iter}; they are {action} (unconverged="
                    f"{self.unconverged!r}) and {self._tag(_tags.CONVERGED, block)} is 0. Raise `max_iter` "
                    "or `tol`. (Warned once.)",
                    category=RuntimeWarning,
                )
        metrics = {
            tag: v for (tag, v), ok in zip(named, flags, strict=True) if ok or self.unconverged == "log"
        }
        metrics[self._tag(_tags.CONVERGED, block)] = float(all(flags))
        return metrics

    def _start_vectors(self, op: HessianOperator) -> Tensor | None:
        """The warm start for this probe: the last probe's Ritz vectors, if they still fit the operator.

        Under DDP every rank holds the same vectors: they come out of identical Lanczos runs on all-reduced
        products (or from the same checkpoint), so every rank starts from the same ``v0``.
        """
        vectors = self._warm_vectors
        if vectors is None:
            return None
        if vectors.shape[-1] != op.num_params:
            # The trainable parameters changed (e.g. layers frozen or unfrozen): the vectors mean nothing now.
            self._warm_vectors = None
            return None
        vectors = vectors.to(device=op.device, dtype=op.dtype)
        self._warm_vectors = vectors
        return vectors

    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "last_probe_step": self._last_probe_step,
            "num_probes": self.num_probes,
            "num_skipped": self.num_skipped,
            "total_products": self.total_products,
            "num_unconverged": self.num_unconverged,
        }
        if self._warm_vectors is not None:
            # On the CPU, so that the checkpoint loads on any device (moved back at the next probe).
            state["warm_vectors"] = self._warm_vectors.detach().cpu().clone()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_probe_step = int(state_dict.get("last_probe_step", -1))
        self.num_probes = int(state_dict.get("num_probes", 0))
        self.num_skipped = int(state_dict.get("num_skipped", 0))
        self.total_products = int(state_dict.get("total_products", 0))
        self.num_unconverged = int(state_dict.get("num_unconverged", 0))
        warm = state_dict.get("warm_vectors", None)
        self._warm_vectors = warm.detach().clone() if isinstance(warm, Tensor) and warm.dim() == 2 else None
