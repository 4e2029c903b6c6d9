"""What only TensorBoard can show: the custom-scalars layout, histograms and the spectral density.

Scalars and figures reach every logger through :mod:`._loggers` (``log_scalars`` is re-exported here for the
callbacks that import it from this module); what only TensorBoard can show goes to ``logger.experiment`` of
each logger :func:`~._loggers.logger_kind` calls ``"tensorboard"``. Everything here acts on global rank zero
only and never calls a collective, so calling it from every rank is safe.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_landscape.callbacks import tags as _tags
from lightning_landscape.callbacks._loggers import log_scalars as log_scalars
from lightning_landscape.callbacks._loggers import logger_kind

if TYPE_CHECKING:
    import lightning.pytorch as pl


def _charts(family: str, name: str | None, others: list[str], monitors: list[Any]) -> dict[str, list[Any]]:
    """The charts of one monitor category: only those its ``monitors`` will write data to.

    Each chart is a list of regexes, so per-layer, per-optimizer and eig_k tags join their chart. ``others``
    are the names of the other monitors of the family: an unnamed monitor's catch-all chart leaves their tags
    to their own category. ``monitors`` are the callbacks of this category (usually one); a chart is drawn
    when any of them logs its tags (``trace=True``, ``per_layer``, a ``val_key``, ...), each Hessian block
    gets its own eigenvalue chart.
    """
    p = re.escape(_tags.prefix(family, name))

    def any_of(attribute: str, default: Any = None) -> bool:
        """Whether any monitor has ``attribute`` set: not ``None`` and not ``False`` (``0.0`` is set)."""
        values = [getattr(m, attribute, default) for m in monitors]
        return any(v is not None and v is not False for v in values)

    if family == _tags.GRAD_NORM_SECTION:
        skip = ["total$", r"optimizer_\d+/total$", *(re.escape(o) + "/" for o in others if name is None)]
        charts: dict[str, list[Any]] = {
            "total": ["Multiline", [rf"^{p}/total$", rf"^{p}/optimizer_\d+/total$"]]
        }
        if any_of("per_layer", True):
            charts["per layer"] = ["Multiline", [rf"^{p}/(?!{'|'.join(skip)}).*"]]
        return charts
    if family == _tags.HESSIAN_SECTION:
        blocks: list[str] = []
        for m in monitors:
            blocks.extend(b for b in getattr(m, "blocks", None) or [] if b not in blocks)
        charts = {"eigenvalues": ["Multiline", [rf"^{p}/eig_.*"]]}
        if any_of("trace"):
            charts["trace"] = ["Multiline", [rf"^{p}/{_tags.TRACE}$"]]
        charts["products"] = ["Multiline", [rf"^{p}/{_tags.NUM_PRODUCTS}$"]]
        charts["converged"] = [
            "Multiline",
            [rf"^{p}/{_tags.CONVERGED}$", *(rf"^{p}/{re.escape(b)}/{_tags.CONVERGED}$" for b in blocks)],
        ]
        for block in blocks:
            charts[f"eigenvalues {block}"] = ["Multiline", [rf"^{p}/{re.escape(block)}/eig_.*"]]
        return charts
    if family == _tags.LANDSCAPE_SECTION:
        charts = {
            "sharpness": ["Multiline", [rf"^{re.escape(_tags.LANDSCAPE_SHARPNESS)}$"]],
            "center loss": ["Multiline", [rf"^{re.escape(_tags.LANDSCAPE_CENTER_LOSS)}$"]],
        }
        if any(getattr(m, "mode", None) == "line" for m in monitors):
            charts["curvature"] = ["Multiline", [rf"^{re.escape(_tags.LANDSCAPE_CURVATURE)}$"]]
        if any_of("sharpness_rho"):
            charts["adaptive sharpness"] = [
                "Multiline",
                [rf"^{re.escape(_tags.LANDSCAPE_ADAPTIVE_SHARPNESS)}$"],
            ]
        return charts
    if family == _tags.STABILITY_SECTION:
        # Custom scalars draw no constant lines: the threshold series beside the sharpness is the edge,
        # and the ratio chart's edge is 1.
        charts = {
            "sharpness vs threshold": [
                "Multiline",
                [rf"^{p}/{_tags.SHARPNESS}$", rf"^{p}/{_tags.THRESHOLD}$"],
            ],
            "ratio": ["Multiline", [rf"^{p}/{_tags.RATIO}$"]],
        }
        if any_of("batch_sharpness"):
            charts["batch sharpness"] = ["Multiline", [rf"^{p}/{_tags.BATCH_SHARPNESS}$"]]
        return charts
    if family == _tags.NOISE_SCALE_SECTION:
        # Custom scalars have no log axis; B_simple spans decades, so it has a chart of its own.
        return {
            "b_simple": ["Multiline", [rf"^{p}/{_tags.B_SIMPLE}$"]],
            "gradient and noise": ["Multiline", [rf"^{p}/{_tags.GRAD_SQ}$", rf"^{p}/{_tags.TRACE_COV}$"]],
        }
    val = any_of("val_key", "val_loss")
    optimal = any_of("optimal_risk")
    # The running mean is an explicit choice whose tags say so (RiskGapMonitor(train_risk="running_mean")).
    suffix = (
        f"_{_tags.RUNNING_MEAN}"
        if all(getattr(m, "train_risk", "batches") == "running_mean" for m in monitors)
        else ""
    )
    risks = [_tags.TRAIN + suffix, *([_tags.VAL] if val else [])]
    gaps = [
        *([_tags.GENERALIZATION_GAP + suffix] if val else []),
        *([_tags.OPTIMALITY_GAP + suffix] if optimal else []),
        *([_tags.EXCESS_RISK] if val and optimal else []),
    ]
    charts = {"risk": ["Multiline", [rf"^{p}/{r}$" for r in risks]]}
    if gaps:
        charts["gaps"] = ["Multiline", [rf"^{p}/{gap}$" for gap in gaps]]
    return charts


# Marker set on a SummaryWriter once the layout is in its event file: TensorBoard keeps one layout per run,
# so every landscape callback of the Trainer contributes its family to a single write.
_LAYOUT_WRITTEN = "_lightning_landscape_layout_written"

# The families with a layout category, in the order of the categories.
_FAMILIES = (
    _tags.GRAD_NORM_SECTION,
    _tags.HESSIAN_SECTION,
    _tags.RISK_SECTION,
    _tags.LANDSCAPE_SECTION,
    _tags.STABILITY_SECTION,
    _tags.NOISE_SCALE_SECTION,
)


def tensorboard_writers(trainer: pl.Trainer) -> list[Any]:
    """The ``SummaryWriter`` of every ``TensorBoardLogger`` of ``trainer``, on global rank zero only."""
    if not trainer.is_global_zero:
        return []
    loggers: list[Any] = trainer.loggers
    return [logger.experiment for logger in loggers if logger_kind(logger) == "tensorboard"]


def layout(callbacks: list[Any]) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout of ``callbacks``: a category per landscape monitor, its charts with data.

    Each callback class declares its family in ``_landscape_family`` and an instance its ``name``; the
    category of an unnamed monitor is its family (``hessian``), of a named one ``family/name``.
    """
    monitors: dict[str, dict[str | None, list[Any]]] = {}
    for cb in callbacks:
        family = getattr(cb, "_landscape_family", None)
        if family in _FAMILIES:
            monitors.setdefault(family, {}).setdefault(getattr(cb, "name", None), []).append(cb)
    out: dict[str, dict[str, list[Any]]] = {}
    for family in _FAMILIES:
        by_name = monitors.get(family, {})
        others = [n for n in by_name if n is not None]
        for name, members in by_name.items():
            out[_tags.prefix(family, name)] = _charts(family, name, others, members)
    return out


def write_layout(trainer: pl.Trainer) -> None:
    """Write one custom-scalars layout (:func:`layout`) for the landscape monitors of ``trainer``.

    TensorBoard-only: other loggers have no such layout. The first callback to call this writes the layout
    for all of them, later calls are no-ops.
    """
    charts = layout(trainer.callbacks)  # type: ignore[attr-defined]
    if not charts:
        return
    for writer in tensorboard_writers(trainer):
        if getattr(writer, _LAYOUT_WRITTEN, False):
            continue
        writer.add_custom_scalars(charts)
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
