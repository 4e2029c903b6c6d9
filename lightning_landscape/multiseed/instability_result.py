r"""The result of :func:`~lightning_landscape.multiseed.instability.instability`: barriers against the
branch step, when the basin is fixed, as JSON, a table and a figure."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class InstabilityResult:
    r"""Barriers between two children branched from one parent at each step :math:`k`.

    For branch step :math:`k` with children's end weights :math:`\theta_a, \theta_b` (after
    ``total_steps``),

    .. math::

        B(k) = \max_t L((1-t)\,\theta_a + t\,\theta_b) - \big((1-t)\,L(\theta_a) + t\,L(\theta_b)\big)

    on the grid ``ts``. The threshold at :math:`k` is

    .. math::

        \tau(k) = \texttt{tol} + \texttt{rtol} \cdot \tfrac{1}{2}\big(L(\theta_a) + L(\theta_b)\big)

    (``tol`` in loss units, ``rtol`` relative to the children's mean end loss, like ``numpy.isclose``),
    and :attr:`stable_step`, the answer to "after how many steps is the basin fixed?", is the first branch
    step from which on every barrier stays at or below its threshold.

    Attributes:
        branch_steps: the steps :math:`k`, increasing.
        barriers: :math:`B(k)`, one per branch step.
        child_losses: :math:`(L(\theta_a), L(\theta_b))` per branch step, on the probe batches.
        distances: :math:`\lVert \theta_a - \theta_b \rVert_2` over the trainable parameters.
        ts: the points :math:`t` of every segment, from 0 to 1.
        curves: the loss along each segment at ``ts``, one per branch step.
        total_steps: steps every child was trained to.
        seed: the seed of the initialization and of the parent.
        child_seeds: the two children's seeds.
        tol: absolute part of the threshold (loss units).
        rtol: relative part of the threshold.

    Example:
        >>> res = InstabilityResult((0, 10), (0.5, 0.001), ((0.1, 0.1), (0.1, 0.1)), (2.0, 0.1), (0.0, 1.0),
        ...                         ((0.1, 0.1), (0.1, 0.1)), 100, 0, (1, 2))
        >>> res.stable_step
        10
    """

    branch_steps: tuple[int, ...]
    barriers: tuple[float, ...]
    child_losses: tuple[tuple[float, float], ...]
    distances: tuple[float, ...]
    ts: tuple[float, ...]
    curves: tuple[tuple[float, ...], ...]
    total_steps: int
    seed: int
    child_seeds: tuple[int, int]
    tol: float = 0.01
    rtol: float = 0.0

    def thresholds(self) -> tuple[float, ...]:
        r"""The threshold :math:`\tau(k)` per branch step."""
        return tuple(self.tol + self.rtol * 0.5 * (a + b) for a, b in self.child_losses)

    @property
    def stable_step(self) -> int | None:
        """The first branch step from which on every barrier is at or below its threshold; ``None`` if the
        last branch step's barrier is above it (the basin is not fixed at any measured step)."""
        found: int | None = None
        for k, barrier, tau in zip(self.branch_steps, self.barriers, self.thresholds(), strict=True):
            if barrier <= tau:
                found = k if found is None else found
            else:
                found = None
        return found

    def summary(self) -> str:
        """One line: after how many steps the basin is fixed."""
        rule = f"barrier <= {self.tol:g}" + (f" + {self.rtol:g} x end loss" if self.rtol else "")
        stable = self.stable_step
        if stable is None:
            return f"the basin is not fixed by step {self.branch_steps[-1]} ({rule} nowhere from there on)"
        if stable == self.branch_steps[0]:
            return f"the basin is fixed from step {stable} on, the first branch step ({rule})"
        return f"the basin is fixed after {stable} of {self.total_steps} steps ({rule} from there on)"

    def table(self) -> str:
        """A plain-text table: branch step, barrier, children's end losses, distance."""
        lines = [f"{'step':>8}  {'barrier':>11}  {'loss a':>11}  {'loss b':>11}  {'distance':>10}"]
        for k, barrier, (a, b), d in zip(
            self.branch_steps, self.barriers, self.child_losses, self.distances, strict=True
        ):
            lines.append(f"{k:>8}  {barrier:>11.4g}  {a:>11.4g}  {b:>11.4g}  {d:>10.4g}")
        lines.append(self.summary())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (lists, numbers), with ``stable_step`` and ``summary`` added."""
        out: dict[str, Any] = {
            "kind": "instability",
            "branch_steps": list(self.branch_steps),
            "barriers": list(self.barriers),
            "child_losses": [list(pair) for pair in self.child_losses],
            "distances": list(self.distances),
            "ts": list(self.ts),
            "curves": [list(c) for c in self.curves],
            "total_steps": self.total_steps,
            "seed": self.seed,
            "child_seeds": list(self.child_seeds),
            "tol": self.tol,
            "rtol": self.rtol,
        }
        out["stable_step"] = self.stable_step
        out["summary"] = self.summary()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstabilityResult:
        """The result back from :meth:`to_dict` (the derived keys are ignored).

        Raises:
            ValueError: if ``data`` is not an instability result.
        """
        if not isinstance(data, dict) or data.get("kind") != "instability":
            raise ValueError("`data` is not an instability result (its 'kind' must be 'instability').")
        return cls(
            branch_steps=tuple(int(k) for k in data["branch_steps"]),
            barriers=tuple(float(v) for v in data["barriers"]),
            child_losses=tuple((float(a), float(b)) for a, b in data["child_losses"]),
            distances=tuple(float(v) for v in data["distances"]),
            ts=tuple(float(v) for v in data["ts"]),
            curves=tuple(tuple(float(v) for v in c) for c in data["curves"]),
            total_steps=int(data["total_steps"]),
            seed=int(data["seed"]),
            child_seeds=(int(data["child_seeds"][0]), int(data["child_seeds"][1])),
            tol=float(data["tol"]),
            rtol=float(data["rtol"]),
        )

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> InstabilityResult:
        """Read a result written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def plot(self, ax: Any = None) -> Any:
        """The barrier against the branch step, the threshold dashed and the stable step marked.

        The step axis is logarithmic (linear up to the first positive step, so step 0 stays on it) when
        the positive steps span at least a decade. Returns the figure.
        """
        if ax is None:
            from matplotlib.figure import Figure

            fig = Figure(figsize=(5.5, 4.0))
            ax = fig.add_subplot(1, 1, 1)
        fig = ax.figure
        ax.plot(
            self.branch_steps,
            self.barriers,
            marker="o",
            color="C0",
            clip_on=False,
            label="barrier between children",
        )
        ax.plot(self.branch_steps, self.thresholds(), ls="--", lw=0.8, color="grey", label="threshold")
        ax.axhline(0.0, color="black", lw=0.5)
        stable = self.stable_step
        if stable is not None:
            ax.axvline(stable, color="C2", lw=0.8, ls=":", label=f"basin fixed at step {stable}")
        positive = [k for k in self.branch_steps if k > 0]
        if positive and max(positive) >= 10 * min(positive):
            ax.set_xscale("symlog", linthresh=min(positive))
            ax.set_xlim(left=0, right=1.5 * max(positive))  # symlog would show an empty negative half
        if len(self.branch_steps) <= 12:
            ax.set_xticks(list(self.branch_steps), [str(k) for k in self.branch_steps])
            ax.minorticks_off()
        ax.set_xlabel(f"branch step k (children trained to step {self.total_steps})")
        ax.set_ylabel("loss barrier")
        ax.set_title("instability: when is the basin fixed?")
        ax.legend(fontsize="small")
        fig.tight_layout()
        return fig


__all__ = ["InstabilityResult"]
