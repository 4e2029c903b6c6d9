"""What the compiled step of :class:`SeedEnsemble` needs around :func:`torch.compile`.

Whether inductor can run here at all, the partitioner setting that makes the compiled ReLU network faster
than the eager one, and the fused optimizer kernel where one exists.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_landscape._torch import dynamo_supported, functorch_config, has_triton


def compile_unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` (the inductor backend) cannot run on ``device`` here, or ``None`` if it can.

    Inductor generates C++ on a CPU (it needs a C++ compiler) and Triton kernels on a CUDA GPU (it needs the
    ``triton`` package); other devices and interpreters without TorchDynamo are not attempted.

    Args:
        device: where the compiled step would run.

    Returns:
        The reason in words, or ``None``.

    Example:
        >>> compile_unavailable(torch.device("meta"))
        "torch.compile is not attempted on device type 'meta' (only cpu and cuda)"
    """
    if not dynamo_supported():
        version = sys.version.split()[0]
        return f"TorchDynamo does not support this interpreter (Python {version}, {sys.platform})"
    if device.type == "cpu":
        compiler = os.environ.get("CXX", "c++")
        if shutil.which(compiler) is None and shutil.which("g++") is None and shutil.which("clang++") is None:
            return f"inductor needs a C++ compiler on a CPU; none found (CXX={compiler!r}, g++, clang++)"
        return None
    if device.type == "cuda":
        return None if has_triton() else "inductor needs the `triton` package on a CUDA device"
    return f"torch.compile is not attempted on device type {device.type!r} (only cpu and cuda)"


def recompute_masks() -> Any:
    """AOTAutograd's partitioner set to recompute cheap pointwise results in the backward graph.

    By default it saves e.g. a ReLU's ``x <= 0`` mask as a bool tensor for the backward graph; inductor's
    vectorized CPU code for that bool store was ~40x slower than the ReLU itself in torch 2.13 (K=64 of the
    (1,50,50,1) net: compiled step 2-3x slower than eager). Recomputing the mask from the saved activation
    instead made the compiled step faster than eager. Applied to every compile (and recompile) of the loss.
    """
    return functorch_config().patch(aggressive_recomputation=True)


def fused_optimizer(cls: type[torch.optim.Optimizer], params: Sequence[Tensor], **kwargs: Any) -> Any:
    """``cls(params, fused=True, ...)`` where the device and dtype have a fused kernel, else the default.

    Example:
        >>> opt = fused_optimizer(torch.optim.Adam, [torch.zeros(2, requires_grad=True)], lr=0.1)
        >>> type(opt).__name__
        'Adam'
    """
    try:
        return cls(params, fused=True, **kwargs)  # type: ignore[call-arg]
    except (RuntimeError, TypeError, ValueError):
        return cls(params, **kwargs)
