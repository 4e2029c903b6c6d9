"""What one ``HessianProbe`` run (:mod:`~lightning_landscape.callbacks._hessian_probe`) measured, as plain
numbers: the extreme eigenvalues of one operator (:class:`Extremes`) and the whole result
(:class:`HessianProbeResult`), converted from the curvature core's ``EigenResult``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

from lightning_landscape.callbacks import tags
from lightning_landscape.curvature import EigenResult, SpectralDensity


@dataclass(frozen=True)
class Extremes:
    """The extreme eigenvalues of one operator, each with whether it met the tolerance.

    Attributes:
        largest: the top-``k`` eigenvalues, descending.
        largest_converged: per value of ``largest``, whether it converged.
        smallest: the smallest eigenvalue (``None`` unless the probe asked for it).
        smallest_converged: whether ``smallest`` converged (``None`` without it).
    """

    largest: tuple[float, ...]
    largest_converged: tuple[bool, ...]
    smallest: float | None = None
    smallest_converged: bool | None = None

    @property
    def converged(self) -> bool:
        """Every value held here converged."""
        return all(self.largest_converged) and self.smallest_converged is not False

    def named(self) -> list[tuple[str, float, bool]]:
        """``(quantity, value, converged)`` per value, quantities named as in :mod:`~.tags`: ``eig_1`` (the
        largest) ... ``eig_k``, then ``eig_min``."""
        pairs = zip(self.largest, self.largest_converged, strict=True)
        named = [(f"eig_{i}", v, ok) for i, (v, ok) in enumerate(pairs, start=1)]
        if self.smallest is not None:
            named.append((tags.EIG_MIN, self.smallest, bool(self.smallest_converged)))
        return named


@dataclass(frozen=True)
class HessianProbeResult:
    """What one :meth:`HessianProbe.run` measured, as plain numbers.

    Attributes:
        eigen: the extreme eigenvalues of the probed Hessian (the ``params`` block).
        blocks: per entry of ``blocks``, the extreme eigenvalues of its diagonal block.
        trace: the Hutchinson estimate of the trace (``None`` unless asked for).
        density: the spectral density (``None`` unless asked for).
        num_products: every Hessian-vector product of the run (eigenvalues, trace, density, blocks; and
            pyhessian's own).
    """

    eigen: Extremes
    blocks: Mapping[str, Extremes] = field(default_factory=dict)
    trace: float | None = None
    density: SpectralDensity | None = None
    num_products: int = 0


def _flags(values: Tensor | bool | None, count: int) -> tuple[bool, ...]:
    """``count`` per-value flags from per-value ones (padded with their conjunction) or one flag for all."""
    if isinstance(values, Tensor):
        flags = [bool(f) for f in values.tolist()][:count]
        return tuple(flags + [all(flags)] * (count - len(flags)))
    return (bool(values),) * count


def extremes(result: EigenResult, smallest: bool) -> Extremes:
    """The :class:`Extremes` of an eigen result: its top-k and, with ``smallest``, its smallest value."""
    largest = tuple(float(v) for v in result.eigenvalues)
    overall = result.converged
    flags = _flags(result.value_converged if result.value_converged is not None else overall, len(largest))
    if not smallest or result.smallest is None:
        return Extremes(largest, flags)
    low = result.smallest_converged if result.smallest_converged is not None else overall
    return Extremes(largest, flags, float(result.smallest[0]), _flags(low, 1)[0])


def result_values(result: HessianProbeResult) -> dict[str, float]:
    """Every number of a result by name (for the finiteness check and its message)."""
    values: dict[str, float] = {}
    for block, eigen in [(None, result.eigen), *result.blocks.items()]:
        values.update({(f"{block}/{q}" if block else q): v for q, v, _ in eigen.named()})
    if result.trace is not None:
        values[tags.TRACE] = result.trace
    return values


__all__ = ["Extremes", "HessianProbeResult", "extremes", "result_values"]
