"""The permutation structure of a network (Git Re-Basin's ``PermutationSpec``) and its union-find.

A spec lists, for every parameter and buffer axis that a hidden-unit permutation acts on, which permutation
group acts on it, on which span and in which blocks; groups merged by residual additions or shared weights
are one group. :mod:`._derive_spec` derives it from a module's ``torch.fx`` graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["in", "out", "other"]
_SUPPORTED = (
    "Linear, Conv1d/2d, BatchNorm, LayerNorm (last dim), Embedding, MultiheadAttention, element-wise "
    "activations, Dropout, Identity, pooling, flatten from dim 1, residual +/-, products with scalars"
)


@dataclass(frozen=True)
class AxisEntry:
    """Group ``group`` permutes axis ``axis`` of tensor ``name`` on ``[offset, offset + size * block)`` in
    contiguous blocks of ``block``; ``role`` says how a positive rescaling of the units acts (``"out"``:
    times ``c``, ``"in"``: times ``1/c``)."""

    name: str
    axis: int
    group: str
    block: int = 1
    offset: int = 0
    role: Role = "other"


@dataclass(frozen=True)
class PermutationSpec:
    """Groups (name -> units, in graph order), their axis entries, the rescalable groups (an order in which
    normalizing each one's incoming norms is canonical), and per group the modules whose output carries it
    (``(module name, dim)``, for activation matching)."""

    sizes: dict[str, int]
    entries: tuple[AxisEntry, ...]
    rescalable: tuple[str, ...] = ()
    probes: dict[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)


class Groups:
    """Union-find over permutation groups: sizes, fixed and homogeneous flags, first name."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.name: list[str] = []
        self.fixed: list[bool] = []
        self.homogeneous: list[bool] = []

    def new(self, size: int, name: str) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.name.append(name)
        self.fixed.append(False)
        self.homogeneous.append(True)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] != self.size[rb]:
            raise refuse(where, f"joins axes of {self.size[ra]} and {self.size[rb]} units")
        ra, rb = min(ra, rb), max(ra, rb)  # the earliest group names the merged one
        self.parent[rb] = ra
        self.fixed[ra] |= self.fixed[rb]
        self.homogeneous[ra] &= self.homogeneous[rb]
        return ra

    def fix(self, g: int) -> None:
        self.fixed[self.find(g)] = True

    def inhomogeneous(self, g: int) -> None:
        self.homogeneous[self.find(g)] = False


def refuse(where: str, why: str, hint: str = "e.g. nn.Flatten instead of .view") -> ValueError:
    """The error for a step whose effect on permuted axes is unknown: where, why, and what to do."""
    return ValueError(
        f"align cannot derive the permutation structure: {where} {why}, so permuting hidden units through it "
        f"could change the function. Supported on permuted axes: {_SUPPORTED}. Rewrite that step with a "
        f"supported module ({hint}), or compare the models without alignment."
    )


def rescalable(candidates: list[str], entries: tuple[AxisEntry, ...]) -> tuple[str, ...]:
    """Groups rescalable exactly: only "in"/"out" uses, one producing layer, and an order in which each
    group's incoming rows depend only on groups normalized before it (cycles are dropped)."""
    producers: dict[str, set[str]] = {g: set() for g in candidates}
    for e in entries:
        if e.group in producers and e.role == "other":
            producers.pop(e.group)
    for e in entries:
        if e.group in producers and e.role == "out":
            producers[e.group].add(e.name.rpartition(".")[0])
    ok = [g for g in candidates if g in producers and len(producers[g]) == 1]
    rows = {g: {e.name for e in entries if e.group == g and e.role == "out"} for g in ok}
    depends = {
        g: {e.group for e in entries if e.name in rows[g] and e.role == "in" and e.group in rows} for g in ok
    }
    order: list[str] = []
    while True:
        ready = [g for g in ok if g not in order and depends[g] <= set(order)]
        if not ready:
            return tuple(order)
        order.extend(ready)
