"""Shallow ReLU networks trained by online SGD on the population risk (after arXiv 2212.13111).

The set-up of the numerical experiments of Jentzen & Riekert, *Non-convergence to global minimizers
for Adam and stochastic gradient descent optimization ...* (arXiv 2212.13111): one input
:math:`X \\sim \\mathcal{U}[0, 1]`, one output, a fresh batch of 1024 samples per step, squared error

.. math::

    \\mathcal{R}(\\theta) = \\mathbb{E}\\big[(\\mathcal{N}_\\theta(X) - f(X))^2\\big]
    = \\int_0^1 (\\mathcal{N}_\\theta(x) - f(x))^2 \\, dx ,

for a target :math:`f` among ``"quadratic"`` (:math:`x^2 + 2x`), ``"sin3"`` (:math:`\\sin 3x`),
``"x4sin"`` (:math:`x^4 \\sin x`) and ``"teacher"`` (a fixed ReLU network: the student realizes it
exactly once it is at least as wide, so the optimal risk is exactly 0).

Run it from plain Python (one model, a few hundred steps)::

    python examples/shallow_relu.py --max_steps 300 --target sin3

or from the command line with a config::

    lightning-landscape fit --config configs/shallow_relu.yaml
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset
from typing_extensions import override

Target = Literal["quadratic", "sin3", "x4sin", "teacher"]
TARGETS: tuple[str, ...] = ("quadratic", "sin3", "x4sin", "teacher")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")


def teacher_network(width: int = 4, seed: int = 1234) -> nn.Sequential:
    """The fixed teacher ReLU network ``(1, width, 1)`` of the ``"teacher"`` target.

    Its kinks :math:`-b_j / w_j` are placed inside :math:`(0, 1)` so that every hidden unit matters on
    the input domain; any student with a hidden layer at least ``width`` wide realizes it exactly.

    Args:
        width: number of hidden ReLU units.
        seed: seed of the private generator that draws the teacher's weights.

    Raises:
        ValueError: if ``width`` is not a positive int.

    Example::

        teacher = teacher_network(width=4)
        y = teacher(torch.rand(8, 1))
    """
    _check_positive_int("width", width)
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(1, width), nn.ReLU(), nn.Linear(width, 1))
    with torch.no_grad():
        sign = torch.where(torch.rand(width, generator=gen) < 0.5, -1.0, 1.0)
        w = sign * (0.5 + 1.5 * torch.rand(width, generator=gen))
        kinks = 0.1 + 0.8 * torch.rand(width, generator=gen)
        net[0].weight.copy_(w[:, None])
        net[0].bias.copy_(-w * kinks)
        net[2].weight.copy_(torch.randn(1, width, generator=gen))
        net[2].bias.copy_(torch.randn(1, generator=gen))
    net.requires_grad_(False)
    return net


def target_function(
    target: str, teacher_width: int = 4, teacher_seed: int = 1234
) -> Callable[[Tensor], Tensor]:
    """The regression target :math:`f` by name.

    Args:
        target: one of ``"quadratic"``, ``"sin3"``, ``"x4sin"``, ``"teacher"``.
        teacher_width: hidden width of the teacher network (``"teacher"`` only).
        teacher_seed: seed of the teacher's weights (``"teacher"`` only).

    Raises:
        ValueError: for an unknown ``target``.

    Example::

        f = target_function("sin3")
        f(torch.tensor([[0.5]]))  # tensor([[0.9975]])
    """
    if target == "quadratic":
        return lambda x: x**2 + 2 * x
    if target == "sin3":
        return lambda x: torch.sin(3 * x)
    if target == "x4sin":
        return lambda x: x**4 * torch.sin(x)
    if target == "teacher":
        teacher = teacher_network(teacher_width, teacher_seed)

        def f(x: Tensor) -> Tensor:
            t = teacher.to(dtype=x.dtype, device=x.device)
            with torch.no_grad():
                return t(x)

        return f
    raise ValueError(f"`target` must be one of {TARGETS}, got {target!r}.")


def population_risk(
    net: Callable[[Tensor], Tensor], target: Callable[[Tensor], Tensor], num_points: int = 100_000
) -> float:
    """The population risk :math:`\\int_0^1 (\\mathcal{N}(x) - f(x))^2 dx` by the midpoint rule.

    Both functions are piecewise smooth on :math:`[0, 1]`, so ``num_points`` midpoints give the
    integral to about ``1e-9`` relative accuracy, far below the sampling noise of any batch.

    Args:
        net: the network (any callable mapping ``[n, 1]`` inputs to ``[n, 1]`` outputs).
        target: the target function, e.g. from :func:`target_function`.
        num_points: number of midpoints.

    Raises:
        ValueError: if ``num_points`` is not a positive int.

    Example::

        risk = population_risk(model.net, target_function("quadratic"))
    """
    _check_positive_int("num_points", num_points)
    device = next(iter(net.parameters())).device if isinstance(net, nn.Module) else torch.device("cpu")
    x = (torch.arange(num_points, dtype=torch.float64, device=device) + 0.5) / num_points
    x = x[:, None]
    with torch.no_grad():
        if isinstance(net, nn.Module):
            dtype = next(iter(net.parameters())).dtype
            pred = net(x.to(dtype)).to(torch.float64)
        else:
            pred = net(x).to(torch.float64)
        return float(((pred - target(x).to(torch.float64)) ** 2).mean())


class _OnlineBatches(IterableDataset):
    """``steps_per_epoch`` fresh batches per epoch, drawn from a seeded private generator.

    Epoch ``e`` uses the generator seeded with ``(seed, e)``, so the stream is reproducible and
    independent of the global RNG (``seed_everything`` only decides the initialization).
    """

    def __init__(self, target: Callable[[Tensor], Tensor], batch_size: int, steps: int, seed: int) -> None:
        self.target = target
        self.batch_size = batch_size
        self.steps = steps
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        for _ in range(self.steps):
            x = torch.rand(self.batch_size, 1, generator=gen)
            yield x, self.target(x)


class ShallowReLUDataModule(pl.LightningDataModule):
    """Online regression data on :math:`[0, 1]`: a fresh batch per step, a fixed validation set.

    Training draws ``batch_size`` new samples :math:`x \\sim \\mathcal{U}[0, 1]` for every step (stochastic
    gradient descent on the population risk). The validation set is by default the midpoint grid
    :math:`x_j = (j + 1/2) / n`, :math:`n` = ``val_size``, so ``val_loss`` *is* the population risk by the
    midpoint rule (error :math:`O(n^{-2})` on each smooth piece), not a noisy estimate of it; with
    ``val_grid=False`` it is ``val_size`` fixed uniform samples instead.

    Args:
        target: ``"quadratic"`` (:math:`x^2+2x`), ``"sin3"`` (:math:`\\sin 3x`), ``"x4sin"``
            (:math:`x^4 \\sin x`) or ``"teacher"`` (a fixed ReLU net, optimal risk 0).
        batch_size: samples per training step.
        steps_per_epoch: training steps in one epoch.
        val_size: size of the fixed validation set (one batch).
        seed: seed of the training stream (and of the validation samples when ``val_grid=False``).
        val_grid: validate on the midpoint grid (the population risk) rather than on random samples.
        teacher_width: hidden width of the teacher network.
        teacher_seed: seed of the teacher's weights.

    Raises:
        ValueError: for an unknown ``target`` or a non-positive size.

    Example::

        dm = ShallowReLUDataModule(target="sin3", steps_per_epoch=100)
        pl.Trainer(max_steps=500).fit(ShallowReLU(hidden=[20]), datamodule=dm)
    """

    def __init__(
        self,
        target: Target = "quadratic",
        batch_size: int = 1024,
        steps_per_epoch: int = 100,
        val_size: int = 4096,
        seed: int = 0,
        val_grid: bool = True,
        teacher_width: int = 4,
        teacher_seed: int = 1234,
    ) -> None:
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"`target` must be one of {TARGETS}, got {target!r}.")
        for name, value in (
            ("batch_size", batch_size),
            ("steps_per_epoch", steps_per_epoch),
            ("val_size", val_size),
            ("teacher_width", teacher_width),
        ):
            _check_positive_int(name, value)
        self.save_hyperparameters()
        self.target_name = target
        self.target = target_function(target, teacher_width, teacher_seed)
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.val_size = val_size
        self.seed = seed
        self._train = _OnlineBatches(self.target, batch_size, steps_per_epoch, seed)
        if val_grid:
            x_val = ((torch.arange(val_size, dtype=torch.float64) + 0.5) / val_size).to(torch.float32)[
                :, None
            ]
        else:
            x_val = torch.rand(val_size, 1, generator=torch.Generator().manual_seed(seed + 7_777_777))
        self._val = TensorDataset(x_val, self.target(x_val))

    @property
    def optimal_risk(self) -> float:
        """The infimum of the risk over all networks: 0 for ``"teacher"``, ``nan`` (unknown) otherwise."""
        return 0.0 if self.target_name == "teacher" else math.nan

    @override
    def train_dataloader(self) -> DataLoader:
        # The dataset yields whole batches: batch_size=None turns off the loader's own batching.
        return DataLoader(self._train, batch_size=None)

    @override
    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._val, batch_size=self.val_size)

    @override
    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class ShallowReLU(pl.LightningModule):
    """A fully connected ReLU network ``(1, *hidden, 1)`` fitted by squared error.

    It qualifies for the vectorized multi-seed executor: the whole trainable model is ``self.net`` and
    every step computes :meth:`loss_on_batch`. Initialization happens in ``__init__``, so the network
    built after ``seed_everything(s)`` is the same for every executor.

    Args:
        hidden: widths of the hidden layers, e.g. ``[20]`` or ``[50, 50]``.
        init: ``"he"`` (weights :math:`\\mathcal{N}(0, 2 / \\text{fan\\_in})`) or ``"xavier"``
            (:math:`\\mathcal{N}(0, 2 / (\\text{fan\\_in} + \\text{fan\\_out}))`).
        bias_init: ``"normal"`` draws the biases like the weights, so the kinks of the first layer spread
            over the input domain; ``"zero"`` starts them at 0, as the authors' scripts of
            arXiv 2212.13111 do (``tf.zeros`` biases, He-normal weights).
        optimizer: ``"sgd"`` (plain) or ``"adam"``.
        lr: learning rate.
        lr_halve_every: halve the learning rate every this many optimizer steps; ``0`` keeps it
            constant. The paper's Adam runs use 500.

    Raises:
        ValueError: for an empty or non-positive ``hidden``, an unknown ``init``/``bias_init``/
            ``optimizer``, a non-positive ``lr`` or a negative ``lr_halve_every``.

    Example::

        model = ShallowReLU(hidden=[20], optimizer="adam", lr=0.01, lr_halve_every=500)
        pl.Trainer(max_steps=1000).fit(model, datamodule=ShallowReLUDataModule())
    """

    def __init__(
        self,
        hidden: list[int] | None = None,
        init: Literal["he", "xavier"] = "he",
        bias_init: Literal["normal", "zero"] = "normal",
        optimizer: Literal["sgd", "adam"] = "sgd",
        lr: float = 0.01,
        lr_halve_every: int = 0,
    ) -> None:
        super().__init__()
        hidden = [20] if hidden is None else list(hidden)
        if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"`hidden` must be a non-empty list of positive ints, got {hidden!r}.")
        if init not in ("he", "xavier"):
            raise ValueError(f"`init` must be 'he' or 'xavier', got {init!r}.")
        if bias_init not in ("normal", "zero"):
            raise ValueError(f"`bias_init` must be 'normal' or 'zero', got {bias_init!r}.")
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"`optimizer` must be 'sgd' or 'adam', got {optimizer!r}.")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"`lr` must be a positive finite float, got {lr!r}.")
        if isinstance(lr_halve_every, bool) or not isinstance(lr_halve_every, int) or lr_halve_every < 0:
            raise ValueError(
                f"`lr_halve_every` must be an int >= 0 (0: constant lr), got {lr_halve_every!r}."
            )
        self.save_hyperparameters()
        sizes = [1, *hidden, 1]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            linear = nn.Linear(fan_in, fan_out)
            std = math.sqrt(2.0 / fan_in) if init == "he" else math.sqrt(2.0 / (fan_in + fan_out))
            with torch.no_grad():
                linear.weight.normal_(0.0, std)
                if bias_init == "normal":
                    linear.bias.normal_(0.0, std)
                else:
                    linear.bias.zero_()
            layers.append(linear)
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def loss_on_batch(self, net: Callable[..., Tensor], batch: Any) -> Tensor:
        """Mean squared error of ``net`` on one ``(x, y)`` batch (the executor-agnostic loss)."""
        x, y = batch
        return F.mse_loss(net(x), y)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.loss_on_batch(self.net, batch)
        # on_epoch too: the epoch mean in the progress bar and the loggers (RiskGapMonitor takes its own
        # training risk at the weights each validation ran at).
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.loss_on_batch(self.net, batch)
        self.log("val_loss", loss, prog_bar=True)
        return loss

    @override
    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.loss_on_batch(self.net, batch)
        self.log("test_loss", loss)
        return loss

    @override
    def configure_optimizers(self) -> Any:
        params = self.net.parameters()
        opt: torch.optim.Optimizer
        if self.hparams["optimizer"] == "adam":
            opt = torch.optim.Adam(params, lr=self.hparams["lr"])
        else:
            opt = torch.optim.SGD(params, lr=self.hparams["lr"])
        if self.hparams["lr_halve_every"] == 0:
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.hparams["lr_halve_every"], gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def main(argv: list[str] | None = None) -> float:
    """Train one network from plain Python and print its population risk."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", default="quadratic", choices=TARGETS)
    parser.add_argument("--hidden", type=int, nargs="+", default=[20])
    parser.add_argument("--optimizer", default="adam", choices=("sgd", "adam"))
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--lr_halve_every", type=int, default=500)
    parser.add_argument("--max_steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root_dir", default="runs/shallow_relu")
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed, workers=True, verbose=False)
    dm = ShallowReLUDataModule(target=args.target, steps_per_epoch=100)
    model = ShallowReLU(
        hidden=args.hidden, optimizer=args.optimizer, lr=args.lr, lr_halve_every=args.lr_halve_every
    )
    trainer = pl.Trainer(
        max_steps=args.max_steps,
        default_root_dir=args.root_dir,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(model, datamodule=dm)
    risk = population_risk(model.net, dm.target)
    print(f"seed {args.seed}: population risk {risk:.3e} after {trainer.global_step} steps ({args.target})")
    return risk


if __name__ == "__main__":
    main()
