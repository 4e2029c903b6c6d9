"""Where the callbacks' numbers go: scalars to every logger, TensorBoard-only artifacts to TensorBoard.

Scalars reach every logger through ``logger.log_metrics`` at an explicit step (:func:`log_scalars`); what only
TensorBoard can show (the custom-scalars layout, histograms) goes to ``logger.experiment`` behind an
``isinstance(logger, TensorBoardLogger)`` check. Everything here acts on global rank zero only and never calls
a collective, so calling it from every rank is safe.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from lightning_landscape.callbacks import tags as _tags

if TYPE_CHECKING:
    import lightning.pytorch as pl


def _charts(family: str, name: str | None, others: list[str], blocks: list[str]) -> dict[str, list[Any]]:
    """The charts of one monitor: regexes, so per-layer, per-optimizer and eig_k tags join their chart.

    ``others`` are the names of the other monitors of the family: an unnamed monitor's catch-all chart leaves
    their tags to their own category. Each Hessian block gets its own eigenvalue chart.
    """
    p = re.escape(_tags.prefix(family, name))
    if family == _tags.GRAD_NORM_SECTION:
        skip = ["total$", r"optimizer_\d+/total$", *(re.escape(o) + "/" for o in others if name is None)]
        return {
            "total": ["Multiline", [rf"^{p}/total$", rf"^{p}/optimizer_\d+/total$"]],
            "per layer": ["Multiline", [rf"^{p}/(?!{'|'.join(skip)}).*"]],
        }
    if family == _tags.HESSIAN_SECTION:
        charts: dict[str, list[Any]] = {
            "eigenvalues": ["Multiline", [rf"^{p}/eig_.*"]],
            "trace": ["Multiline", [rf"^{p}/{_tags.TRACE}$"]],
            "products": ["Multiline", [rf"^{p}/{_tags.NUM_PRODUCTS}$"]],
            "converged": [
                "Multiline",
                [rf"^{p}/{_tags.CONVERGED}$", *(rf"^{p}/{re.escape(b)}/{_tags.CONVERGED}$" for b in blocks)],
            ],
        }
        for block in blocks:
            charts[f"eigenvalues {block}"] = ["Multiline", [rf"^{p}/{re.escape(block)}/eig_.*"]]
        return charts
    gaps = (_tags.GENERALIZATION_GAP, _tags.OPTIMALITY_GAP, _tags.EXCESS_RISK)
    return {
        "risk": ["Multiline", [rf"^{p}/{_tags.TRAIN}$", rf"^{p}/{_tags.VAL}$"]],
        "gaps": ["Multiline", [rf"^{p}/{gap}$" for gap in gaps]],
    }


# Marker set on a SummaryWriter once the layout is in its event file: TensorBoard keeps one layout per run,
# so every landscape callback of the Trainer contributes its family to a single write.
_LAYOUT_WRITTEN = "_lightning_landscape_layout_written"


def tensorboard_writers(trainer: pl.Trainer) -> list[Any]:
    """The ``SummaryWriter`` of every ``TensorBoardLogger`` of ``trainer``, on global rank zero only."""
    if not trainer.is_global_zero:
        return []
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def write_layout(trainer: pl.Trainer) -> None:
    """Write one custom-scalars layout with a category per landscape monitor of ``trainer``.

    Each callback class declares its family in ``_landscape_family`` and an instance its ``name``; the
    category of an unnamed monitor is its family (``hessian``), of a named one ``family/name``. The first
    callback to call this writes the layout for all of them, later calls are no-ops.
    """
    callbacks: list[Any] = trainer.callbacks  # type: ignore[attr-defined]
    monitors: dict[str, list[str | None]] = {}
    blocks: dict[tuple[str, str | None], list[str]] = {}
    for cb in callbacks:
        family = getattr(cb, "_landscape_family", None)
        if family is not None:
            names = monitors.setdefault(family, [])
            if getattr(cb, "name", None) not in names:
                names.append(getattr(cb, "name", None))
            known = blocks.setdefault((family, getattr(cb, "name", None)), [])
            known.extend(b for b in getattr(cb, "blocks", None) or [] if b not in known)
    layout: dict[str, dict[str, list[Any]]] = {}
    for family in (_tags.GRAD_NORM_SECTION, _tags.HESSIAN_SECTION, _tags.RISK_SECTION):
        names = monitors.get(family, [])
        others = [n for n in names if n is not None]
        for name in names:
            layout[_tags.prefix(family, name)] = _charts(family, name, others, blocks[(family, name)])
    if not layout:
        return
    for writer in tensorboard_writers(trainer):
        if getattr(writer, _LAYOUT_WRITTEN, False):
            continue
        writer.add_custom_scalars(layout)
        setattr(writer, _LAYOUT_WRITTEN, True)


def add_histogram(trainer: pl.Trainer, tag: str, values: Tensor, step: int) -> None:
    """Histogram of ``values`` under ``tag`` in every TensorBoard logger (rank zero only)."""
    writers = tensorboard_writers(trainer)
    if not writers:
        return
    values = values.detach().to("cpu", torch.float64)
    for writer in writers:
        writer.add_histogram(tag, values, global_step=step)


def add_density(
    trainer: pl.Trainer, tag: str, grid: Tensor, density: Tensor, total: float, step: int
) -> None:
    """A spectral density on ``grid`` shown as a TensorBoard histogram holding ``total`` eigenvalues.

    The density is integrated over each grid cell, so the bucket counts estimate how many eigenvalues fall in
    it.
    """
    writers = tensorboard_writers(trainer)
    if not writers:
        return
    grid = grid.detach().to("cpu", torch.float64)
    density = density.detach().to("cpu", torch.float64).clamp_min(0)
    widths = torch.diff(grid, prepend=grid[:1] - (grid[1:2] - grid[:1]) if grid.numel() > 1 else grid[:1] - 1)
    mass = density * widths
    counts = mass / mass.sum().clamp_min(torch.finfo(torch.float64).tiny) * total
    num = float(counts.sum())
    mean_sq = float((counts * grid * grid).sum())
    for writer in writers:
        writer.add_histogram_raw(
            tag,
            min=float(grid[0]),
            max=float(grid[-1]),
            num=num,
            sum=float((counts * grid).sum()),
            sum_squares=mean_sq,
            bucket_limits=grid.tolist(),
            bucket_counts=counts.tolist(),
            global_step=step,
        )


def log_scalars(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
    """Write scalars to every logger at ``step`` (loggers write on rank zero only)."""
    if not metrics or not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)
