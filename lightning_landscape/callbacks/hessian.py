r"""Extreme Hessian eigenvalues (trace, density) during fit, around the engine of :mod:`._hessian_probe`."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from lightning_landscape._torch import is_compiled_wrapper
from lightning_landscape.callbacks import tags as _tags
from lightning_landscape.callbacks._batches import check_dataloader
from lightning_landscape.callbacks._checks import check_choice, check_int
from lightning_landscape.callbacks._hessian_probe import Extremes, mode_dependent_kinds
from lightning_landscape.callbacks._lightning import generate_state_key
from lightning_landscape.callbacks._loggers import log_scalars
from lightning_landscape.callbacks._probe import (
    MethodLoss,
    TrainingStepLoss,
    epoch_end_logging_step,
    logging_step,
    resolve_loss_fn,
)
from lightning_landscape.callbacks._probe_monitor import ProbeMonitor
from lightning_landscape.callbacks._tensorboard import add_density, write_layout
from lightning_landscape.curvature import LossFn, NonFiniteError
from lightning_landscape.curvature._checks import DEFAULT_TOL
from lightning_landscape.curvature.operators import HvpMethod


class HessianEigenMonitor(ProbeMonitor):
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
    with and without the monitor. The loss is the module's ``training_step`` or ``loss_fn``, evaluated as a
    probe (``self.log``, ``manual_backward``, optimizer steps silenced: even a manual-optimization step cannot
    move the weights); a manual-optimization module without ``loss_fn`` is refused in ``setup``.

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

    Under FSDP2 (``ModelParallelStrategy``, ``configure_model`` calling ``fully_shard``) products are finite
    differences of the sharded gradients (relative error about 1e-8 in float64, 1e-5 to 1e-4 in float32:
    keep ``tol`` above it), each rank on its own probe batches; ``params``, ``blocks``, ``trace`` and
    ``density`` work. Refused before the first step: ``backend="pyhessian"``, ``hvp`` other than
    ``"auto"``/``"finite_difference"``, HSDP and tensor parallelism, ``FSDPStrategy`` (FSDP1), DeepSpeed.

    With ``warm_start`` (default) each probe's Lanczos (or power) iteration starts from the Ritz vectors of
    the previous probe (top-``k``, and bottom-``k`` with ``smallest``) plus a small seeded random part: the
    weights move little between probes, so the iteration needs fewer products, and the values are as
    accurate as from a random start (each is still held to ``tol``). The vectors (``k``, or ``2k`` with
    ``smallest``, each the size of the trainable parameters) live on the module's device and in this
    callback's ``state_dict``, so a resumed run continues exactly as the uninterrupted one; they are dropped
    when the number of trainable parameters changes. ``backend="pyhessian"`` always starts cold; it computes
    the largest eigenvalues of the full Hessian on one process only, so it is refused with ``smallest``,
    ``params`` or ``blocks`` (in ``__init__``) and on several processes (in ``setup``).

    The probe itself is the Trainer-free :class:`~._hessian_probe.HessianProbe`, whose options and
    ``warm_vectors`` this adapter inherits (as Lightning's ``SpikeDetection`` does fabric's).

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
        dataloader: Where the probe batches come from: ``"train"``, ``"val"`` (the first validation
            dataloader), or ``"train:<name>"`` / ``"val:<name>"`` for the dataloader under key ``<name>`` of a
            dict or ``CombinedLoader`` of several (index ``<name>`` of a list); ``"train"`` is refused with
            several training dataloaders, naming the choices.
        loss_fn: Import path ``"pkg.module:function"`` (or ``"pkg.module.function"``) of
            ``loss_fn(model, batch) -> Tensor``, or ``"self.<method>"`` for ``module.<method>(batch)`` (pick
            one loss of several, e.g. ``"self.d_loss"``); ``None`` uses the module's ``training_step``.
        tol: Relative tolerance of each eigenvalue, ``> 0``.
        backend: ``"lanczos"``, ``"power"`` or ``"pyhessian"`` (largest only, no ``params``/``blocks``, one
            process; needs the ``pyhessian`` extra).
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
        hvp: How products are taken (:class:`~lightning_landscape.curvature.HessianOperator`'s ``hvp``).

    Raises:
        ValueError: If an argument is invalid (checked in ``__init__``), e.g. ``backend="pyhessian"`` with
            ``params`` or ``blocks``; when training starts, if ``dataloader`` names no dataloader of the
            Trainer (the message names those there are).
        MisconfigurationException: Before the first step: for what FSDP cannot run (above), with
            ``backend="pyhessian"`` on several processes (DDP), when ``params``/``blocks`` select nothing or
            too little for ``k``, or for a manual-optimization module without ``loss_fn``.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_landscape import HessianEigenMonitor
        >>> monitor = HessianEigenMonitor(k=3, every_n_steps=100, smallest=True)
        >>> per_layer = HessianEigenMonitor(every_n_steps=100, blocks=["net.0", "net.2"], name="layers")
        >>> trainer = Trainer(callbacks=[monitor, per_layer], logger=False, enable_checkpointing=False)
        >>> monitor.state_key != per_layer.state_key
        True
    """

    monitor_name = "HessianEigenMonitor"
    checkpointed = (
        ("_last_probe_step", -1),
        ("num_probes", 0),
        ("num_skipped", 0),
        ("total_products", 0),
        ("num_unconverged", 0),
    )

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
        dataloader: str = "train",
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
        hvp: HvpMethod = "auto",
    ) -> None:
        check_int("every_n_steps", every_n_steps, optional=True)
        check_int("every_n_epochs", every_n_epochs, optional=True)
        if every_n_steps is None and every_n_epochs is None:
            raise ValueError("`every_n_steps` and `every_n_epochs` are both None: set at least one of them")
        check_int("num_batches", num_batches)
        check_dataloader(dataloader)
        check_choice("unconverged", unconverged, ("log", "skip"))
        _tags.check_name(name)
        super().__init__(
            k=k,
            smallest=smallest,
            trace=trace,
            trace_samples=trace_samples,
            density=density,
            density_iter=density_iter,
            density_runs=density_runs,
            tol=tol,
            backend=backend,
            max_iter=max_iter,
            train_mode=train_mode,
            memory=memory,
            seed=seed,
            warm_start=warm_start,
            params=params,
            blocks=blocks,
            hvp=hvp,
        )
        for block in blocks or []:
            _tags.check_name(block, "blocks")  # each block is a tag segment
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.num_batches = num_batches
        self.dataloader = dataloader
        self.loss_fn = loss_fn
        self.unconverged = unconverged
        self.name = name
        self._loss_fn: LossFn | None = resolve_loss_fn(loss_fn) if loss_fn is not None else None
        self._last_probe_step = -1
        self.num_probes = 0
        self.num_skipped = 0
        self.total_products = 0
        self._state_key: tuple[tuple[Any, ...], str] | None = None
        self.num_unconverged = 0
        self._warned_mode = False

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads the key at every hook call (profiler names): rebuilt only when an argument changed.
        args = (self.k, self.every_n_steps, self.every_n_epochs, self.dataloader, self.num_batches, self.name)
        if self._state_key is None or self._state_key[0] != args:
            # An unnamed monitor keeps the key of earlier versions, so their checkpoints still resume.
            named = {} if self.name is None else {"name": self.name}
            key = generate_state_key(
                self,
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
        self._check_strategy(trainer)
        if self._sharded:  # the parameters are sharded in configure_model, after this hook: see on_fit_start
            try:
                self.check_sharded()
            except ValueError as err:
                raise MisconfigurationException(f"HessianEigenMonitor: {err}") from err
        if self.backend == "pyhessian" and trainer.world_size > 1:
            raise MisconfigurationException(
                f"HessianEigenMonitor: `backend`='pyhessian' cannot run on {trainer.world_size} processes "
                f"({type(trainer.strategy).__name__}): its products are not all-reduced, so each rank would "
                "log the Hessian of its own shard. Use backend='lanczos' (all-reduced) or one process."
            )
        if isinstance(self._loss_fn, MethodLoss):
            self._loss_fn.check(pl_module)
        if not self._sharded:
            self._check_model(pl_module)
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
            kinds = mode_dependent_kinds(pl_module)
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
        if self._sharded:  # configure_model has sharded the parameters by now
            self._check_model(pl_module)
        write_layout(trainer)

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
        try:
            result = self.run(pl_module, TrainingStepLoss(self._loss_fn), self._batches)
        except NonFiniteError as err:
            self.num_skipped += 1
            rank_zero_warn(
                f"HessianEigenMonitor: skipped the probe at step {trainer.global_step}, the loss or a "
                f"Hessian-vector product is not finite ({err}). Nothing was logged for it; training goes on.",
                category=RuntimeWarning,
            )
            return
        metrics = self._eigen_metrics(trainer, result.eigen)
        if result.trace is not None:
            metrics[self._tag(_tags.TRACE)] = result.trace
        for block, eigen in result.blocks.items():
            metrics.update(self._eigen_metrics(trainer, eigen, block))
        self.num_probes += 1
        self.total_products += result.num_products
        metrics[self._tag(_tags.NUM_PRODUCTS)] = float(result.num_products)
        log_scalars(trainer, metrics, step)
        for tag, value in metrics.items():
            pl_module.log(tag, value, logger=False, sync_dist=False)
        if result.density is not None:
            grid, dens = result.density.on_grid()
            add_density(trainer, self._tag(_tags.DENSITY), grid, dens, float(result.density.num_params), step)

    def _tag(self, quantity: str, block: str | None = None) -> str:
        return _tags.hessian_tag(quantity, self.name, block)

    def _eigen_metrics(
        self, trainer: pl.Trainer, eigen: Extremes, block: str | None = None
    ) -> dict[str, float]:
        """Tags of one operator's values and ``converged``; unconverged values left out if asked."""
        named = [(self._tag(quantity, block), v, ok) for quantity, v, ok in eigen.named()]
        if not eigen.converged:
            self.num_unconverged += 1
            if self.num_unconverged == 1:
                bad = [tag for tag, _, ok in named if not ok]
                action = "logged anyway" if self.unconverged == "log" else "not logged"
                rank_zero_warn(
                    f"HessianEigenMonitor: at step {trainer.global_step} {bad} did not converge to "
                    f"tol={self.tol} within max_iter={self.max_iter}; they are {action} (unconverged="
                    f"{self.unconverged!r}) and {self._tag(_tags.CONVERGED, block)} is 0. Raise `max_iter` "
                    "or `tol`. (Warned once.)",
                    category=RuntimeWarning,
                )
        metrics = {tag: v for tag, v, ok in named if ok or self.unconverged == "log"}
        metrics[self._tag(_tags.CONVERGED, block)] = float(eigen.converged)
        return metrics
