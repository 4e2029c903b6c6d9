"""Tag names of everything the callbacks log: one place, imported everywhere else (tests included)."""

from __future__ import annotations

GRAD_NORM_SECTION = "grad_norm"
GRAD_NORM_TOTAL = "grad_norm/total"
GRAD_NORM_HISTOGRAM = "grad_norm/histogram"

HESSIAN_SECTION = "hessian"
HESSIAN_EIG_MIN = "hessian/eig_min"
HESSIAN_TRACE = "hessian/trace"
HESSIAN_NUM_PRODUCTS = "hessian/num_products"
HESSIAN_DENSITY = "hessian/density"

RISK_SECTION = "risk"
RISK_TRAIN = "risk/train"
RISK_VAL = "risk/val"
RISK_GENERALIZATION_GAP = "risk/generalization_gap"
RISK_OPTIMALITY_GAP = "risk/optimality_gap"


def grad_norm_tag(name: str) -> str:
    """Tag of the gradient norm of one module or parameter, e.g. ``grad_norm/net.0``."""
    return f"{GRAD_NORM_SECTION}/{name}"


def hessian_eig_tag(i: int) -> str:
    """Tag of the ``i``-th largest Hessian eigenvalue, 1-based: ``hessian/eig_1`` is the largest."""
    if i < 1:
        raise ValueError(f"eigenvalue index must be >= 1, got {i}")
    return f"{HESSIAN_SECTION}/eig_{i}"
