r"""Loss lines or planes around the current weights during fit, and the plane of the trajectory at the end."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

from lightning_landscape.callbacks._batches import check_dataloader, draw_batches, probe_dataloader
from lightning_landscape.callbacks._checks import check_choice, check_float, check_int
from lightning_landscape.callbacks._lightning import generate_state_key, sharded_refusal, sharding
from lightning_landscape.callbacks._loggers import log_figure, log_scalars
from lightning_landscape.callbacks._probe import TrainingStepLoss, epoch_end_logging_step, resolve_loss_fn
from lightning_landscape.callbacks._tensorboard import write_layout
from lightning_landscape.callbacks.tags import (
    LANDSCAPE_ADAPTIVE_SHARPNESS,
    LANDSCAPE_CENTER_LOSS,
    LANDSCAPE_CURVATURE,
    LANDSCAPE_IMAGE,
    LANDSCAPE_SECTION,
    LANDSCAPE_SHARPNESS,
    LANDSCAPE_TRAJECTORY_IMAGE,
)
from lightning_landscape.curvature import LossFn
from lightning_landscape.curvature.operators._strategies import refuse_unsupported
from lightning_landscape.landscape import (
    LineResult,
    PlaneResult,
    adaptive_sharpness,
    hessian_directions,
    loss_line,
    loss_plane,
    random_directions,
    trajectory_plane,
)
from lightning_landscape.landscape.directions import Direction, flatten, named_trainable, unflatten


class LossLandscapeMonitor(Callback):
    r"""Draw the loss along fixed directions around the current weights, on a schedule, and the trajectory.

    With :math:`L` the batch-size-weighted mean loss over ``num_batches`` fixed probe batches (drawn once
    like the Hessian monitor's: a fresh pass over the train or val dataloader under ``seed``), every
    ``every_n_epochs`` epochs and at fit end the monitor evaluates :math:`L(\theta_t + \alpha d_1)` on
    ``steps`` values of :math:`\alpha \in [-\text{span}, \text{span}]` (``mode="line"``) or
    :math:`L(\theta_t + \alpha d_1 + \beta d_2)` on a ``steps x steps`` grid (``mode="plane"``). The
    directions are drawn once at the start of training and kept for the whole run (and in the checkpoint),
    so that frames at different epochs are comparable: ``"random"`` (filter-normalized Gaussian, biases and
    norm layers zeroed, Li et al. 2018) or ``"hessian"`` (the top-2 Hessian eigenvectors at the first
    weights, unit norm).

    Logged at each probe: ``landscape/sharpness``
    :math:`= \max_{|\alpha|, |\beta| \le r} L - L(\theta_t)` at radius :math:`r` = ``sharpness_radius``
    (default ``span``), ``landscape/center_loss`` and, in line mode, ``landscape/curvature``
    :math:`= d_1^\top H d_1` (the eigenvalue for ``"hessian"``), to every logger and to
    ``trainer.callback_metrics``; with ``sharpness_rho``, ``landscape/adaptive_sharpness``, the worst-case (or
    average) adaptive sharpness of :func:`~lightning_landscape.landscape.adaptive_sharpness` on the probe
    batches at radius ``sharpness_rho`` (invariant to the rescaling symmetries of ReLU networks, unlike
    ``landscape/sharpness``; under DDP each rank measures its own shard of the probe batches and the logged
    value is the mean over ranks); the figure to every logger (``landscape/surface``, rank zero: TensorBoard's
    images, an MLflow artifact, a W&B image, a PNG under ``<log_dir>/figures/`` for others); the result
    as ``epoch_<e>.npz`` and ``.png`` under ``<log_dir>/landscape/``. At fit end, with ``trajectory``, the
    plane of the first two PCA directions of the weights seen at the probes (tomgoldstein's trajectory plot)
    is drawn (``landscape/trajectory``, ``trajectory.npz``/``.png``); the iterates (trainable parameters, on
    the CPU) are kept in this callback's state, so a resumed run draws the whole path.

    Probing leaves training bit-identical (model, gradients, modes, every RNG, logged metrics). Under DDP
    every rank evaluates its shard of the probe batches, the losses are all-reduced, and rank zero writes.
    Under FSDP2 (``ModelParallelStrategy`` with ``fully_shard`` in ``configure_model``) the same, with the
    directions sharded like the parameters, the points evaluated one by one on the shards and the curvature
    by finite differences (see :func:`~lightning_landscape.landscape.loss_line`); ``trajectory`` and
    ``sharpness_rho`` are refused there (they need unsharded weights), so pass ``trajectory=False``.

    Args:
        every_n_epochs: Probe at the end of every this many training epochs (and at fit end).
        mode: ``"line"`` or ``"plane"``.
        directions: ``"random"`` or ``"hessian"``.
        span: Half-width of the grid in units of the directions (``> 0``).
        steps: Points per axis (``>= 3``; odd keeps the centre on the grid).
        sharpness_radius: Radius of ``landscape/sharpness`` (``None``: ``span``).
        num_batches: How many batches of the dataloader form the probe.
        dataloader: Where the probe batches come from: ``"train"``, ``"val"`` (the first validation
            dataloader), or ``"train:<name>"`` / ``"val:<name>"`` for the dataloader under key ``<name>`` of a
            dict or ``CombinedLoader`` of several (index ``<name>`` of a list); ``"train"`` is refused with
            several training dataloaders, naming the choices.
        loss_fn: Import path ``"pkg.module:function"`` of ``loss_fn(model, batch) -> Tensor``; ``None`` uses
            the module's ``training_step`` with its logging silenced.
        trajectory: At fit end, draw the trajectory plane of the probed iterates (needs 3 of them).
        seed: Seeds the probe batches' draw, the random directions and the adaptive sharpness' start.
        sharpness_rho: Radius :math:`\rho > 0` of ``landscape/adaptive_sharpness``; ``None`` logs none.
        sharpness_p: Norm of its element-wise scaled ball: ``2`` or ``"inf"``.
        sharpness_kind: ``"worst"`` (projected gradient ascent, ``sharpness_steps`` gradients) or
            ``"average"`` (random perturbations in antithetic pairs).
        sharpness_steps: Ascent steps of the worst case.

    Raises:
        ValueError: If an argument is invalid (checked in ``__init__``); when training starts, if
            ``dataloader`` names no dataloader of the Trainer (the message names those there are).
        MisconfigurationException: In ``setup`` under ``FSDPStrategy`` or DeepSpeed, and under
            ``ModelParallelStrategy`` with ``trajectory`` or ``sharpness_rho``; at fit start under
            ``ModelParallelStrategy`` for parameters not sharded plainly by ``fully_shard`` over all ranks.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_landscape.callbacks.landscape import LossLandscapeMonitor
        >>> monitor = LossLandscapeMonitor(every_n_epochs=5, mode="plane", steps=21)
        >>> trainer = Trainer(callbacks=[monitor])
    """

    _landscape_family = LANDSCAPE_SECTION

    def __init__(
        self,
        every_n_epochs: int = 1,
        mode: Literal["line", "plane"] = "line",
        directions: Literal["random", "hessian"] = "random",
        span: float = 1.0,
        steps: int = 21,
        sharpness_radius: float | None = None,
        num_batches: int = 1,
        dataloader: str = "train",
        loss_fn: str | None = None,
        trajectory: bool = True,
        seed: int = 0,
        sharpness_rho: float | None = None,
        sharpness_p: Literal[2, "inf"] = 2,
        sharpness_kind: Literal["worst", "average"] = "worst",
        sharpness_steps: int = 10,
    ) -> None:
        check_int("every_n_epochs", every_n_epochs)
        check_int("steps", steps, minimum=3)
        check_int("num_batches", num_batches)
        check_int("seed", seed, minimum=0)
        check_choice("mode", mode, ("line", "plane"))
        check_choice("directions", directions, ("random", "hessian"))
        check_dataloader(dataloader)
        check_float("span", span, positive=True)
        check_float("sharpness_radius", sharpness_radius, optional=True, positive=True)
        check_float("sharpness_rho", sharpness_rho, optional=True, positive=True)
        if isinstance(sharpness_p, bool) or sharpness_p not in (2, "inf"):
            raise ValueError(f"`sharpness_p` must be 2 or 'inf', got {sharpness_p!r}.")
        check_choice("sharpness_kind", sharpness_kind, ("worst", "average"))
        check_int("sharpness_steps", sharpness_steps)
        self.every_n_epochs = every_n_epochs
        self.mode = mode
        self.directions = directions
        self.span = float(span)
        self.steps = steps
        self.sharpness_radius = float(sharpness_radius) if sharpness_radius is not None else self.span
        self.num_batches = num_batches
        self.dataloader = dataloader
        self.loss_fn = loss_fn
        self.trajectory = bool(trajectory)
        self.seed = seed
        self.sharpness_rho = None if sharpness_rho is None else float(sharpness_rho)
        self.sharpness_p: Literal[2, "inf"] = sharpness_p
        self.sharpness_kind: Literal["worst", "average"] = sharpness_kind
        self.sharpness_steps = sharpness_steps
        self._loss_fn: LossFn | None = resolve_loss_fn(loss_fn) if loss_fn is not None else None
        self._batches: list[Any] | None = None
        self._directions: list[Tensor] | None = None  # flat, CPU
        self._iterates: list[Tensor] = []  # flat trainable parameters at each probe, CPU
        self._last_probe_step = -1
        self.num_probes = 0
        self.last_result: LineResult | PlaneResult | None = None
        self.trajectory_result: PlaneResult | None = None
        self._sharded = False  # under ModelParallelStrategy (FSDP2), set in setup

    @property
    @override
    def state_key(self) -> str:
        return generate_state_key(
            self,
            every_n_epochs=self.every_n_epochs,
            mode=self.mode,
            directions=self.directions,
            seed=self.seed,
        )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        refusal = sharded_refusal("LossLandscapeMonitor", trainer.strategy)
        if refusal is not None:
            raise MisconfigurationException(refusal)
        self._sharded = sharding(trainer.strategy) == "model_parallel"
        if self._sharded and self.trajectory:
            raise MisconfigurationException(
                "LossLandscapeMonitor: `trajectory`=True cannot run under FSDP: the trajectory plane keeps a "
                "full copy of the weights per probe and evaluates on unsharded weights. Pass "
                "trajectory=False under ModelParallelStrategy (lines and planes run on the shards)."
            )
        if self._sharded and self.sharpness_rho is not None:
            raise MisconfigurationException(
                f"LossLandscapeMonitor: `sharpness_rho`={self.sharpness_rho} cannot run under FSDP: adaptive "
                "sharpness differentiates through unsharded weights. Leave sharpness_rho=None under "
                "ModelParallelStrategy."
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._sharded:  # configure_model has sharded the parameters by now
            try:
                refuse_unsupported(pl_module, "finite_difference")
            except ValueError as err:
                raise MisconfigurationException(f"LossLandscapeMonitor: {err}") from err
        write_layout(trainer)

    def _loss(self) -> LossFn:
        return self._loss_fn if self._loss_fn is not None else TrainingStepLoss()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = probe_dataloader(trainer, self.dataloader)
        self._batches = draw_batches(
            loader, self.num_batches, self.seed, to_device=trainer.strategy.batch_to_device
        )
        like = named_trainable(pl_module)
        n = sum(p.numel() for p in like.values())
        if self._directions is not None and all(d.numel() == n for d in self._directions):
            return  # restored from a checkpoint: the run keeps its directions
        if self.directions == "random":
            dirs: list[Direction] = random_directions(pl_module, 2, seed=self.seed)
        else:
            dirs = hessian_directions(pl_module, self._loss(), self._batches, k=2, seed=self.seed).directions
        self._directions = [flatten(d, like).detach().cpu() for d in dirs]

    def _dirs(self, pl_module: pl.LightningModule) -> list[Direction]:
        assert self._directions is not None
        like = named_trainable(pl_module)
        return [unflatten(d.to(next(iter(like.values())).device), like) for d in self._directions]

    def _log_dir(self, trainer: pl.Trainer) -> Path:
        return Path(trainer.log_dir or trainer.default_root_dir) / "landscape"

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        metrics = self._probe(trainer, pl_module, f"epoch_{trainer.current_epoch}")
        for tag, value in metrics.items():
            pl_module.log(tag, value, logger=False, sync_dist=False)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._batches is None or self._directions is None:
            return
        if trainer.global_step != self._last_probe_step:
            self._probe(trainer, pl_module, "final")
        if self.trajectory and len(self._iterates) >= 3:
            self._draw_trajectory(trainer, pl_module)

    def _probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> dict[str, float]:
        if self._batches is None or self._directions is None:
            return {}
        self._last_probe_step = trainer.global_step
        dirs = self._dirs(pl_module)
        span = (-self.span, self.span)
        result: LineResult | PlaneResult
        if self.mode == "line":
            result = loss_line(
                pl_module, self._loss(), self._batches, direction=dirs[0], span=span, steps=self.steps
            )
            sharp = result.sharpness(self.sharpness_radius)
        else:
            result = loss_plane(
                pl_module, self._loss(), self._batches, directions=dirs, span=span, steps=self.steps
            )
            inside = (result.alphas.abs() <= self.sharpness_radius + 1e-12)[:, None] & (
                result.betas.abs() <= self.sharpness_radius + 1e-12
            )[None, :]
            values = result.losses[inside & torch.isfinite(result.losses)]
            sharp = float(values.max()) - result.center_loss if values.numel() else math.nan
        result.meta.update(
            {"directions": self.directions, "epoch": trainer.current_epoch, "step": trainer.global_step}
        )
        result.meta["title"] = (
            f"{self.mode} along {self.directions} directions, epoch {trainer.current_epoch}"
        )
        self.last_result = result
        self.num_probes += 1
        if not self._sharded:  # under FSDP no trajectory: no full copy of the weights per probe
            self._iterates.append(
                flatten({k: p.detach() for k, p in named_trainable(pl_module).items()}).cpu()
            )
        metrics = {LANDSCAPE_SHARPNESS: sharp, LANDSCAPE_CENTER_LOSS: result.center_loss}
        if isinstance(result, LineResult) and result.curvature is not None:
            metrics[LANDSCAPE_CURVATURE] = result.curvature
        if self.sharpness_rho is not None:
            metrics[LANDSCAPE_ADAPTIVE_SHARPNESS] = self._adaptive_sharpness(trainer, pl_module)
        step = epoch_end_logging_step(trainer)
        log_scalars(trainer, metrics, step)
        self._write(trainer, result, name, LANDSCAPE_IMAGE, step)
        return metrics

    def _adaptive_sharpness(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        assert self._batches is not None and self.sharpness_rho is not None
        value = adaptive_sharpness(
            pl_module,
            self._loss(),
            self._batches,
            rho=self.sharpness_rho,
            p=self.sharpness_p,
            kind=self.sharpness_kind,
            steps=self.sharpness_steps,
            seed=self.seed,
        ).value
        if trainer.world_size > 1:
            local = torch.tensor(value, dtype=torch.float64, device=pl_module.device)
            value = float(trainer.strategy.reduce(local, reduce_op="mean"))
        return value

    def _write(
        self, trainer: pl.Trainer, result: LineResult | PlaneResult, name: str, tag: str, step: int
    ) -> None:
        """Figure to every logger and files under the log dir, on global rank zero only (no collective)."""
        folder = self._log_dir(trainer)  # on every rank: trainer.log_dir broadcasts (a collective)
        if not trainer.is_global_zero:
            return
        folder.mkdir(parents=True, exist_ok=True)
        result.save(folder / f"{name}.npz")
        fig = result.plot()
        fig.savefig(folder / f"{name}.png", dpi=100)
        log_figure(trainer, tag, fig, step)

    def _draw_trajectory(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._batches is not None
        like = named_trainable(pl_module)
        device = next(iter(like.values())).device
        states = [unflatten(flat.to(device), like) for flat in self._iterates]
        plane = trajectory_plane(states, pl_module, self._loss(), self._batches, steps=self.steps)
        self.trajectory_result = plane
        self._write(trainer, plane, "trajectory", LANDSCAPE_TRAJECTORY_IMAGE, epoch_end_logging_step(trainer))

    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"last_probe_step": self._last_probe_step, "num_probes": self.num_probes}
        if self._directions is not None:
            state["directions"] = [d.clone() for d in self._directions]
        state["iterates"] = [t.clone() for t in self._iterates]
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_probe_step = int(state_dict.get("last_probe_step", -1))
        self.num_probes = int(state_dict.get("num_probes", 0))
        dirs = state_dict.get("directions")
        if isinstance(dirs, list) and all(isinstance(d, Tensor) for d in dirs):
            self._directions = [d.detach().cpu().clone() for d in dirs]
        iterates = state_dict.get("iterates", [])
        self._iterates = [t.detach().cpu().clone() for t in iterates if isinstance(t, Tensor)]
