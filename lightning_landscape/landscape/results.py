"""Small results of the landscape functions: tensors plus plain metadata, saved as ``.npz`` or ``.pt``.

Every result has ``to_dict()`` (plain values and CPU tensors), ``save(path)`` (``.npz`` through numpy, or
``.pt`` through ``torch.save``; both load back with :meth:`load`, ``.pt`` with ``weights_only=True``: a file
in a run folder is data, never code) and ``plot(ax=None)`` returning a matplotlib figure.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor

R = TypeVar("R", bound="_Result")


def _axes(ax: Any) -> tuple[Any, Any]:
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.0, 4.0))
        return fig, fig.add_subplot(1, 1, 1)
    return ax.figure, ax


def _read(path: Path) -> Any:
    """The raw content of a saved result: plain values only (``weights_only``, no pickles in ``.npz``)."""
    if path.suffix == ".pt":
        return torch.load(path, map_location="cpu", weights_only=True)
    data: dict[str, Any] = {}
    with np.load(path, allow_pickle=False) as npz:
        for key in npz.files:
            arr = npz[key]
            if key == "meta":
                data[key] = json.loads(str(arr))
            elif arr.dtype.kind in "US":
                data[key] = str(arr)
            elif arr.ndim == 0 and arr.dtype.kind == "f":
                data[key] = float(arr)
            elif arr.ndim == 0:
                data[key] = arr.item()
            else:
                data[key] = torch.from_numpy(arr.copy())
    return data


def _wrong_kind(annotation: str, value: Any) -> str | None:
    """What is wrong with ``value`` for a field annotated ``annotation`` (``None``: nothing)."""
    if value is None:
        return None if "None" in annotation else "must not be None"
    if annotation.startswith("Tensor"):
        return None if isinstance(value, Tensor) else f"must be a tensor, got {type(value).__name__}"
    if annotation.startswith("float") or annotation.startswith("int"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"must be a number, got {type(value).__name__}"
    if annotation.startswith("dict"):
        return None if isinstance(value, dict) else f"must be a mapping, got {type(value).__name__}"
    return None


@dataclasses.dataclass
class _Result:
    """Save/load/dict for a dataclass of tensors, floats and a ``meta`` dict of JSON values."""

    kind: ClassVar[str] = "result"

    def to_dict(self) -> dict[str, Any]:
        """Plain values: CPU tensors, floats, strings and the ``meta`` dict."""
        out: dict[str, Any] = {"kind": self.kind}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = value.detach().cpu() if isinstance(value, Tensor) else value
        return out

    def save(self, path: str | Path) -> Path:
        """Write the result to ``path`` (``.npz`` or ``.pt``); returns the path.

        Raises:
            ValueError: for another suffix.
        """
        path = Path(path)
        data = self.to_dict()
        if path.suffix == ".pt":
            torch.save(data, path)
        elif path.suffix == ".npz":
            arrays: dict[str, Any] = {}
            for key, value in data.items():
                if isinstance(value, Tensor):
                    arrays[key] = value.numpy()
                elif key == "meta":
                    arrays[key] = np.array(json.dumps(value))
                elif value is None:
                    continue
                else:
                    arrays[key] = np.array(value)
            with path.open("wb") as fh:
                np.savez(fh, **arrays)
        else:
            raise ValueError(f"`path` must end in .npz or .pt, got {path.name!r}.")
        return path

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        """The result from :meth:`to_dict`'s output (missing optional fields become ``None``).

        Raises:
            ValueError: a required field is missing or a field holds the wrong kind of value.
        """
        kwargs: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            if field.name not in data:
                if required:
                    raise ValueError(f"a {cls.kind!r} result needs the field {field.name!r}")
                continue
            value = data[field.name]
            problem = _wrong_kind(str(field.type), value)
            if problem:
                raise ValueError(f"field {field.name!r} of a {cls.kind!r} result {problem}")
            kwargs[field.name] = value
        return cls(**kwargs)

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        """Read a result written by :meth:`save` (``.pt`` with ``weights_only=True``).

        Raises:
            ValueError: for another suffix, a file holding another kind of result, or a file that is
                truncated, crafted or not a result at all (the message names the file; nothing in it runs).
            FileNotFoundError: the file does not exist.
        """
        path = Path(path)
        data: dict[str, Any]
        if path.suffix not in (".pt", ".npz"):
            raise ValueError(f"`path` must end in .npz or .pt, got {path.name!r}.")
        try:
            data = _read(path)
            if not isinstance(data, dict):
                raise ValueError(f"holds a {type(data).__name__}, not a result")
            if data.get("kind") == cls.kind:
                return cls.from_dict(data)
        except FileNotFoundError:
            raise
        except Exception as err:  # torch, numpy, zip and JSON all have their own way to say "broken"
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise ValueError(
                f"{path}: not a readable {cls.kind} result ({type(err).__name__}: {first}); nothing in it was"
                " run. Write it again with save()."
            ) from err
        raise ValueError(f"{path} holds a {data.get('kind')!r} result, not a {cls.kind!r} one.")


@dataclasses.dataclass
class LineResult(_Result):
    r"""The loss along a line :math:`\theta + \alpha d`.

    Attributes:
        alphas: ``[steps]`` coordinates (float64).
        losses: ``[steps]`` mean losses (float64).
        center_loss: the loss at :math:`\alpha = 0` (the model's weights).
        slope: :math:`g^\top d` at the centre (``None`` if not computed).
        curvature: :math:`d^\top H d` at the centre (``None`` if not computed); for a unit Hessian
            eigenvector it is the eigenvalue.
        meta: plain metadata (direction kind, normalization, seed, eigenvalue, ...).
    """

    kind: ClassVar[str] = "line"

    alphas: Tensor
    losses: Tensor
    center_loss: float
    slope: float | None = None
    curvature: float | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def quadratic(self) -> Tensor | None:
        r"""The second-order prediction :math:`L + \alpha g^\top d + \frac12 \alpha^2 d^\top H d` on
        ``alphas``, or ``None`` without slope and curvature."""
        if self.slope is None or self.curvature is None:
            return None
        a = self.alphas
        return self.center_loss + a * self.slope + 0.5 * a * a * self.curvature

    def sharpness(self, radius: float | None = None) -> float:
        r""":math:`\max_{|\alpha| \le r} L(\alpha) - L(0)` (all of the line for ``radius=None``)."""
        mask = torch.ones_like(self.alphas, dtype=torch.bool)
        if radius is not None:
            mask = self.alphas.abs() <= radius + 1e-12
        finite = self.losses[mask & torch.isfinite(self.losses)]
        return float(finite.max()) - self.center_loss if finite.numel() else math.nan

    def plot(self, ax: Any = None) -> Any:
        """The loss over ``alphas``, with the quadratic prediction dashed when known; returns the figure."""
        own = ax is None
        fig, ax = _axes(ax)
        a = self.alphas.numpy()
        ax.plot(a, self.losses.numpy(), color="C0", label="loss")
        quad = self.quadratic()
        if quad is not None:
            assert self.curvature is not None
            label = rf"$L + g\cdot d\,a + \frac{{1}}{{2}}\lambda a^2$, $\lambda$={self.curvature:.3g}"
            ax.plot(a, quad.numpy(), color="C1", ls="--", label=label)
            ax.legend(loc="best", fontsize="small")
        ax.axvline(0.0, color="grey", lw=0.5)
        ax.set_xlabel(self.meta.get("xlabel", r"$\alpha$"))
        ax.set_ylabel("loss")
        ax.set_title(self.meta.get("title", "loss along a direction"))
        if own:
            fig.tight_layout()
        return fig

    def _repr_png_(self) -> bytes:
        """The :meth:`plot` figure as PNG bytes: how Jupyter displays the result."""
        return _png(self.plot())


@dataclasses.dataclass
class PlaneResult(_Result):
    r"""The loss on a plane :math:`\theta + \alpha d_1 + \beta d_2`.

    Attributes:
        alphas: ``[steps]`` coordinates along :math:`d_1` (float64).
        betas: ``[steps]`` coordinates along :math:`d_2`.
        losses: ``[len(alphas), len(betas)]``: ``losses[i, j]`` at ``(alphas[i], betas[j])``.
        center_loss: the loss at the origin of the plane.
        path: ``[m, 2]`` coordinates of a path projected on the plane (trajectory plots), else ``None``.
        path_losses: ``[m]`` losses at the path's own weights, else ``None``.
        meta: plain metadata (direction kinds, explained variance, eigenvalues, ...).
    """

    kind: ClassVar[str] = "plane"

    alphas: Tensor
    betas: Tensor
    losses: Tensor
    center_loss: float
    path: Tensor | None = None
    path_losses: Tensor | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def plot(self, ax: Any = None, levels: int = 30) -> Any:
        """Filled contours of the (log-spaced if positive) loss, the centre marked, the path drawn."""
        own = ax is None
        fig, ax = _axes(ax)
        z = self.losses.numpy().T  # rows: betas (y), columns: alphas (x)
        finite = np.isfinite(z)
        z = np.where(finite, z, np.nanmax(np.where(finite, z, np.nan)) if finite.any() else 0.0)
        cs = ax.contourf(self.alphas.numpy(), self.betas.numpy(), z, levels=levels, cmap="viridis")
        ax.contour(self.alphas.numpy(), self.betas.numpy(), z, levels=levels, colors="k", linewidths=0.3)
        fig.colorbar(cs, ax=ax, label="loss")
        if self.path is not None:
            p = self.path.numpy()
            ax.plot(p[:, 0], p[:, 1], "w.-", lw=1.2, ms=4, label="path")
            ax.plot(p[-1, 0], p[-1, 1], "r*", ms=10)
        else:
            ax.plot(0.0, 0.0, "r*", ms=10, label="centre")
        ax.set_xlabel(self.meta.get("xlabel", r"$\alpha$ ($d_1$)"))
        ax.set_ylabel(self.meta.get("ylabel", r"$\beta$ ($d_2$)"))
        ax.set_title(self.meta.get("title", "loss plane"))
        if own:
            fig.tight_layout()
        return fig

    def _repr_png_(self) -> bytes:
        """The :meth:`plot` figure as PNG bytes: how Jupyter displays the result."""
        return _png(self.plot())


@dataclasses.dataclass
class BarrierResult(_Result):
    r"""The loss along the segment :math:`(1 - t)\,\theta_a + t\,\theta_b` and its barrier.

    .. math::

        B = \max_t \; L((1-t)\theta_a + t\theta_b) - \big((1-t) L(\theta_a) + t L(\theta_b)\big)

    (Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis"). :math:`B \le 0` up
    to the grid: the two are linearly connected; :math:`B > 0`: a ridge separates them.

    Attributes:
        ts: ``[steps]`` coordinates from 0 to 1.
        losses: ``[steps]`` losses along the segment.
        loss_a: :math:`L(\theta_a)`; ``loss_b``: :math:`L(\theta_b)`.
        barrier: :math:`B` on the grid.
        t_max: where the maximum is reached.
        meta: plain metadata (``buffers``: how BatchNorm buffers were handled, ...).
    """

    kind: ClassVar[str] = "barrier"

    ts: Tensor
    losses: Tensor
    loss_a: float
    loss_b: float
    barrier: float
    t_max: float
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def excess(self) -> Tensor:
        """``losses`` minus the chord between the endpoint losses."""
        return self.losses - ((1 - self.ts) * self.loss_a + self.ts * self.loss_b)

    def plot(self, ax: Any = None) -> Any:
        """The loss along the segment, the chord dashed and the barrier marked; returns the figure."""
        own = ax is None
        fig, ax = _axes(ax)
        t = self.ts.numpy()
        ax.plot(t, self.losses.numpy(), color="C0", label=self.meta.get("label", "loss"))
        ax.plot([0, 1], [self.loss_a, self.loss_b], color="grey", ls="--", lw=0.8)
        ax.set_xlabel("t")
        ax.set_ylabel("loss")
        ax.set_title(self.meta.get("title", f"linear interpolation, barrier {self.barrier:.3g}"))
        if own:
            fig.tight_layout()
        return fig

    def _repr_png_(self) -> bytes:
        """The :meth:`plot` figure as PNG bytes: how Jupyter displays the result."""
        return _png(self.plot())


def _png(fig: Any) -> bytes:
    """Render ``fig`` through Agg to PNG bytes.

    :meth:`plot` builds a bare :class:`~matplotlib.figure.Figure`, not a pyplot one: no backend is selected
    and no figure stays registered with pyplot, so there is nothing to close and nothing leaks.
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


__all__ = ["BarrierResult", "LineResult", "PlaneResult"]
