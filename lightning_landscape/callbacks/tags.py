"""Every tag name the callbacks (and the vectorized ensemble) log: one place, public, imported everywhere.

Tags are ``section/quantity``. A monitor given a ``name`` puts its tags under ``section/name/quantity``, so
two monitors of one kind (say a train-probe and a val-probe Hessian monitor) write two series instead of one
interleaved one; a per-optimizer gradient norm lives under ``grad_norm/optimizer_<i>/``, a Hessian block
under ``hessian/<block>/``. The constants are the tags of an unnamed monitor.

Example::

    >>> from lightning_landscape.callbacks import tags
    >>> tags.hessian_eig_tag(1)
    'hessian/eig_1'
    >>> tags.hessian_eig_tag(2, name="val")
    'hessian/val/eig_2'
    >>> tags.grad_norm_total_tag(optimizer=1)
    'grad_norm/optimizer_1/total'
    >>> tags.RISK_OPTIMALITY_GAP
    'risk/optimality_gap'
"""

from __future__ import annotations

import re

GRAD_NORM_SECTION = "grad_norm"
HESSIAN_SECTION = "hessian"
RISK_SECTION = "risk"

TOTAL = "total"
HISTOGRAM = "histogram"
EIG_MIN = "eig_min"
TRACE = "trace"
NUM_PRODUCTS = "num_products"
CONVERGED = "converged"
DENSITY = "density"
TRAIN = "train"
VAL = "val"
GENERALIZATION_GAP = "generalization_gap"
OPTIMALITY_GAP = "optimality_gap"
"""Training risk minus the optimal risk: how far optimization is from the optimum."""
EXCESS_RISK = "excess_risk"
"""Validation risk minus the optimal risk: an estimate of the excess (population) risk."""

GRAD_NORM_TOTAL = f"{GRAD_NORM_SECTION}/{TOTAL}"
GRAD_NORM_HISTOGRAM = f"{GRAD_NORM_SECTION}/{HISTOGRAM}"

HESSIAN_EIG_MIN = f"{HESSIAN_SECTION}/{EIG_MIN}"
HESSIAN_TRACE = f"{HESSIAN_SECTION}/{TRACE}"
HESSIAN_NUM_PRODUCTS = f"{HESSIAN_SECTION}/{NUM_PRODUCTS}"
HESSIAN_CONVERGED = f"{HESSIAN_SECTION}/{CONVERGED}"
HESSIAN_DENSITY = f"{HESSIAN_SECTION}/{DENSITY}"

RISK_TRAIN = f"{RISK_SECTION}/{TRAIN}"
RISK_VAL = f"{RISK_SECTION}/{VAL}"
RISK_GENERALIZATION_GAP = f"{RISK_SECTION}/{GENERALIZATION_GAP}"
RISK_OPTIMALITY_GAP = f"{RISK_SECTION}/{OPTIMALITY_GAP}"
RISK_EXCESS_RISK = f"{RISK_SECTION}/{EXCESS_RISK}"
RUNNING_MEAN = "running_mean"
"""Suffix of a risk taken as the epoch's running mean of the step losses (weights moving during the epoch)."""
RISK_TRAIN_RUNNING_MEAN = f"{RISK_SECTION}/{TRAIN}_{RUNNING_MEAN}"
RISK_GENERALIZATION_GAP_RUNNING_MEAN = f"{RISK_SECTION}/{GENERALIZATION_GAP}_{RUNNING_MEAN}"
RISK_OPTIMALITY_GAP_RUNNING_MEAN = f"{RISK_SECTION}/{OPTIMALITY_GAP}_{RUNNING_MEAN}"

LANDSCAPE_SECTION = "landscape"
LANDSCAPE_SHARPNESS = f"{LANDSCAPE_SECTION}/sharpness"
LANDSCAPE_CENTER_LOSS = f"{LANDSCAPE_SECTION}/center_loss"
LANDSCAPE_CURVATURE = f"{LANDSCAPE_SECTION}/curvature"
LANDSCAPE_ADAPTIVE_SHARPNESS = f"{LANDSCAPE_SECTION}/adaptive_sharpness"
LANDSCAPE_IMAGE = f"{LANDSCAPE_SECTION}/surface"
LANDSCAPE_TRAJECTORY_IMAGE = f"{LANDSCAPE_SECTION}/trajectory"

NOISE_SCALE_SECTION = "noise_scale"
B_SIMPLE = "b_simple"
"""The simple gradient noise scale tr(Sigma) / |G|^2 (McCandlish et al. 2018), a batch size."""
GRAD_SQ = "grad_sq"
"""The unbiased estimate of |G|^2, the squared norm of the true gradient."""
TRACE_COV = "trace_cov"
"""The unbiased estimate of tr(Sigma), the trace of the per-sample gradient covariance."""
RAW = "raw"
"""Segment before the quantity of an unsmoothed (single-step) value: ``noise_scale/raw/b_simple``."""

NOISE_SCALE_B_SIMPLE = f"{NOISE_SCALE_SECTION}/{B_SIMPLE}"
NOISE_SCALE_GRAD_SQ = f"{NOISE_SCALE_SECTION}/{GRAD_SQ}"
NOISE_SCALE_TRACE_COV = f"{NOISE_SCALE_SECTION}/{TRACE_COV}"

STABILITY_SECTION = "stability"
SHARPNESS = "sharpness"
"""lambda_1 of H (SGD) or of P^-1 H (Adam, AdamW, RMSprop): the curvature the optimizer's update sees."""
THRESHOLD = "threshold"
"""The largest stable sharpness of the optimizer's update at its current learning rate (2 / lr for GD)."""
RATIO = "ratio"
"""Sharpness / threshold: about 1 at the edge of stability."""
BATCH_SHARPNESS = "batch_sharpness"
"""Mean over the probe mini-batches of g_b' H_b g_b / |g_b|^2."""

STABILITY_SHARPNESS = f"{STABILITY_SECTION}/{SHARPNESS}"
STABILITY_THRESHOLD = f"{STABILITY_SECTION}/{THRESHOLD}"
STABILITY_RATIO = f"{STABILITY_SECTION}/{RATIO}"
STABILITY_BATCH_SHARPNESS = f"{STABILITY_SECTION}/{BATCH_SHARPNESS}"
STABILITY_CONVERGED = f"{STABILITY_SECTION}/{CONVERGED}"

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def check_name(name: str | None, argument: str = "name") -> None:
    """A ``ValueError`` unless ``name`` is ``None`` or one tag segment (letters, digits, ``_``, ``.``, ``-``).

    Example::

        >>> check_name("val")
        >>> check_name("a/b")
        Traceback (most recent call last):
        ...
        ValueError: `name` must be None or a non-empty str of letters, digits, '_', '.' or '-', got 'a/b'.
    """
    if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
        raise ValueError(
            f"`{argument}` must be None or a non-empty str of letters, digits, '_', '.' or '-', got {name!r}."
        )


def prefix(section: str, *parts: str | None) -> str:
    """``section/part/...`` without the parts that are ``None``: where a monitor's tags live."""
    return "/".join([section, *(p for p in parts if p)])


def tag(section: str, quantity: str, *parts: str | None) -> str:
    """The tag of ``quantity`` of the monitor (or block, optimizer) ``parts`` in ``section``."""
    return f"{prefix(section, *parts)}/{quantity}"


def optimizer_part(optimizer: int | None) -> str | None:
    """The tag segment of optimizer ``optimizer`` (0-based), ``None`` when there is only one optimizer."""
    return None if optimizer is None else f"optimizer_{optimizer}"


def grad_norm_tag(layer: str, name: str | None = None, optimizer: int | None = None) -> str:
    """Tag of the gradient norm of one module or parameter, e.g. ``grad_norm/net.0``."""
    return tag(GRAD_NORM_SECTION, layer, name, optimizer_part(optimizer))


def grad_norm_total_tag(name: str | None = None, optimizer: int | None = None) -> str:
    """Tag of the total gradient norm ``grad_norm/total``; per optimizer ``grad_norm/optimizer_<i>/total``."""
    return tag(GRAD_NORM_SECTION, TOTAL, name, optimizer_part(optimizer))


def hessian_eig_tag(i: int, name: str | None = None, block: str | None = None) -> str:
    """Tag of the ``i``-th largest Hessian eigenvalue, 1-based: ``hessian/eig_1`` is the largest."""
    if i < 1:
        raise ValueError(f"eigenvalue index must be >= 1, got {i}")
    return tag(HESSIAN_SECTION, f"eig_{i}", name, block)


def hessian_tag(quantity: str, name: str | None = None, block: str | None = None) -> str:
    """Tag of a Hessian ``quantity`` (:data:`EIG_MIN`, :data:`TRACE`, :data:`CONVERGED`, ...)."""
    return tag(HESSIAN_SECTION, quantity, name, block)


def noise_scale_tag(quantity: str, name: str | None = None, raw: bool = False) -> str:
    """Tag of a noise-scale ``quantity`` (:data:`B_SIMPLE`, :data:`GRAD_SQ`, :data:`TRACE_COV`).

    Example::

        >>> noise_scale_tag(B_SIMPLE), noise_scale_tag(GRAD_SQ, name="fine", raw=True)
        ('noise_scale/b_simple', 'noise_scale/fine/raw/grad_sq')
    """
    return tag(NOISE_SCALE_SECTION, quantity, name, RAW if raw else None)


def stability_tag(quantity: str, name: str | None = None) -> str:
    """Tag of an edge-of-stability ``quantity`` (:data:`SHARPNESS`, :data:`THRESHOLD`, :data:`RATIO`, ...).

    Example::

        >>> stability_tag(RATIO), stability_tag(SHARPNESS, name="d")
        ('stability/ratio', 'stability/d/sharpness')
    """
    return tag(STABILITY_SECTION, quantity, name)


def risk_tag(quantity: str, name: str | None = None) -> str:
    """Tag of a risk ``quantity`` (:data:`TRAIN`, :data:`VAL`, :data:`OPTIMALITY_GAP`, ...)."""
    return tag(RISK_SECTION, quantity, name)
