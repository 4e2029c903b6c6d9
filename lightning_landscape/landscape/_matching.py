r"""The one matching algorithm of :func:`~lightning_landscape.landscape.align` and the moves it makes.

A state is a dict ``name -> float64 tensor``; a :class:`PermutationSpec` says which group permutes which axis.
Convention: after ``permute(state, spec, perms)`` unit ``i`` of group ``g`` is the old unit ``perms[g][i]``.

Weight matching (Ainsworth et al. 2023, Git Re-Basin, algorithm 1) maximizes
:math:`\sum_\ell \langle W^a_\ell, P_\ell W^b_\ell P_{\ell-1}^\top \rangle` by coordinate descent: each step
fixes all groups but one, whose best permutation is then one linear assignment on the :math:`n \times n`
matrix of inner products between the units of ``a`` and those of ``b``. Activation matching assigns units by
the Pearson correlation of their activations on the same inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from lightning_landscape.landscape._permutation_spec import AxisEntry, PermutationSpec

State = dict[str, Tensor]


def _index(entry: AxisEntry, length: int, perm: Tensor) -> Tensor:
    """The gather index along ``entry``'s axis that moves unit ``perm[i]`` to position ``i``."""
    idx = torch.arange(length)
    block = torch.arange(entry.block)
    idx[entry.offset : entry.offset + perm.numel() * entry.block] = (
        entry.offset + perm[:, None] * entry.block + block[None, :]
    ).reshape(-1)
    return idx


def _units(t: Tensor, entry: AxisEntry, units: int) -> Tensor:
    """``t``'s slices along ``entry``'s axis as one row per unit: ``[units, -1]``."""
    moved = t.movedim(entry.axis, 0)[entry.offset : entry.offset + units * entry.block]
    return moved.reshape(units, -1)


def permute(state: Mapping[str, Tensor], spec: PermutationSpec, perms: Mapping[str, Tensor]) -> State:
    """``state`` with every axis of ``spec`` permuted by ``perms`` (groups missing from ``perms`` stay)."""
    out = dict(state)
    for e in spec.entries:
        if e.group in perms:
            t = out[e.name]
            out[e.name] = t.index_select(e.axis, _index(e, t.shape[e.axis], perms[e.group]).to(t.device))
    return out


def scale(state: Mapping[str, Tensor], spec: PermutationSpec, group: str, factors: Tensor) -> State:
    """``state`` with the units of ``group`` rescaled: rows into them (``"out"``) times ``factors``, the
    columns out of them (``"in"``) divided by ``factors``; the function of a positively homogeneous network
    does not change for ``factors > 0``."""
    out = dict(state)
    for e in spec.entries:
        if e.group != group or e.role == "other":
            continue
        t = out[e.name]
        full = torch.ones(t.shape[e.axis], dtype=t.dtype, device=t.device)
        full[e.offset : e.offset + factors.numel() * e.block] = factors.to(t).repeat_interleave(e.block)
        shape = [1] * t.dim()
        shape[e.axis] = -1
        out[e.name] = t * full.reshape(shape) if e.role == "out" else t / full.reshape(shape)
    return out


def incoming_norms(state: Mapping[str, Tensor], spec: PermutationSpec, group: str) -> Tensor:
    """Per unit of ``group``, the Euclidean norm of everything that flows into it (rows and biases)."""
    sq = torch.zeros(spec.sizes[group], dtype=torch.float64)
    for e in spec.entries:
        if e.group == group and e.role == "out":
            sq += _units(state[e.name], e, spec.sizes[group]).pow(2).sum(1).cpu()
    return sq.sqrt()


def normalize(state: Mapping[str, Tensor], spec: PermutationSpec) -> tuple[State, dict[str, Tensor]]:
    """``state`` rescaled so every rescalable unit has incoming norm 1 (groups in ``spec.rescalable`` order,
    so that the result is the same for any positively rescaled copy), and the norms divided out."""
    out, norms = dict(state), {}
    for g in spec.rescalable:
        n = incoming_norms(out, spec, g)
        norms[g] = torch.where(n > 0, n, torch.ones_like(n))  # a dead unit keeps its scale
        out = scale(out, spec, g, 1.0 / norms[g])
    return out, norms


def _assign(cost: Tensor) -> Tensor:
    """The permutation maximizing ``sum_i cost[i, perm[i]]`` (one linear assignment)."""
    from scipy.optimize import linear_sum_assignment  # about a second to import: only when aligning

    _, cols = linear_sum_assignment(cost.cpu().numpy(), maximize=True)
    return torch.as_tensor(cols, dtype=torch.long)


def weight_matching(
    spec: PermutationSpec,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    *,
    max_iter: int,
    seed: int,
    groups: Iterable[str] | None = None,
    init: Mapping[str, Tensor] | None = None,
) -> tuple[dict[str, Tensor], int]:
    """Permutations of ``b``'s units that maximize its inner product with ``a``, and the sweeps taken.

    First one pass in graph order, each group assigned on the entries whose other axes are already matched;
    then coordinate descent over ``groups`` (default: all), in a seeded random order per sweep, each group's
    permutation one linear assignment with the others held; stops after a sweep with no gain or ``max_iter``
    sweeps. Groups not optimized keep ``init`` (identity by default).
    """
    perms = {g: torch.arange(n) for g, n in spec.sizes.items()}
    perms.update(init or {})
    wanted = set(spec.sizes if groups is None else groups)
    order = [g for g in spec.sizes if g in wanted]
    by_group: dict[str, list[AxisEntry]] = {g: [] for g in spec.sizes}
    by_name: dict[str, list[AxisEntry]] = {}
    for e in spec.entries:
        by_group[e.group].append(e)
        by_name.setdefault(e.name, []).append(e)

    def cost_of(g: str, known: set[str] | None = None) -> Tensor:
        """The assignment matrix of ``g`` with the other groups held (only those in ``known``, if given)."""
        n = spec.sizes[g]
        cost = torch.zeros(n, n, dtype=torch.float64)
        for e in by_group[g]:
            others = [o for o in by_name[e.name] if o.axis != e.axis]
            if known is not None and any(o.group not in known for o in others):
                continue
            wb = b[e.name]
            for o in others:
                wb = wb.index_select(o.axis, _index(o, wb.shape[o.axis], perms[o.group]).to(wb.device))
            cost += (_units(a[e.name], e, n) @ _units(wb, e, n).T).cpu()
        return cost

    # Start layer by layer in graph order, each group matched on what only involves groups already matched
    # (the input side first): exact for a permuted copy, and no coordinate descent from the identity into
    # the local optima that coupled groups (residual streams) otherwise fall into.
    known = set(spec.sizes) - set(order)
    for g in order:
        perms[g] = _assign(cost_of(g, known))
        known.add(g)
    rng = np.random.default_rng(seed)
    sweeps = 0
    while sweeps < max_iter and order:
        sweeps += 1
        progress = False
        for i in rng.permutation(len(order)):
            g = order[i]
            n = spec.sizes[g]
            cost = cost_of(g)
            new = _assign(cost)
            rows = torch.arange(n)
            old_value, new_value = cost[rows, perms[g]].sum(), cost[rows, new].sum()
            if new_value > old_value + 1e-12 * max(1.0, float(old_value.abs())):
                perms[g], progress = new, True
        if not progress:
            break
    return perms, sweeps


class Correlations:
    """Running Pearson correlations between the units of two networks' activations, per group."""

    def __init__(self, sizes: Mapping[str, int]) -> None:
        self.sizes = dict(sizes)
        self.sums: dict[tuple[str, int], list[Tensor]] = {}

    def add(self, group: str, probe: int, a: Tensor, b: Tensor, dim: int) -> None:
        n = self.sizes[group]
        xa = a.detach().movedim(dim, -1).reshape(-1, n).to(torch.float64).cpu()
        xb = b.detach().movedim(dim, -1).reshape(-1, n).to(torch.float64).cpu()
        new = [xa.sum(0), xb.sum(0), xa.pow(2).sum(0), xb.pow(2).sum(0), xa.T @ xb, torch.tensor(len(xa))]
        old = self.sums.get((group, probe))
        self.sums[(group, probe)] = new if old is None else [o + s for o, s in zip(old, new, strict=True)]

    def cost(self, group: str) -> Tensor | None:
        """The summed correlation matrices of ``group``'s probes, or None if it had none."""
        total = None
        for (g, _), (sa, sb, saa, sbb, sab, count) in self.sums.items():
            if g != group:
                continue
            ma, mb = sa / count, sb / count
            cov = sab / count - ma[:, None] * mb[None, :]
            sd_a = (saa / count - ma**2).clamp_min(0).sqrt()
            sd_b = (sbb / count - mb**2).clamp_min(0).sqrt()
            corr = cov / (sd_a[:, None] * sd_b[None, :]).clamp_min(1e-12)
            total = corr if total is None else total + corr
        return total

    def permutations(self) -> dict[str, Tensor]:
        """One linear assignment per group that has probes."""
        found = {g: self.cost(g) for g in self.sizes}
        return {g: _assign(c) for g, c in found.items() if c is not None}
