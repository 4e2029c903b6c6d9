r"""The cached first-layer products of the grid evaluator (:mod:`~._evaluate`), and the weights of a point.

Layers applied to the data itself (the first Linear of an MLP, the first Conv of a CNN) get a shortcut: such
a layer is linear in its weight, so for the weight :math:`W_0 + \sum_j c_j D_j` of a point its output is
:math:`f(x; W_0) + \sum_j c_j f(x; D_j)`, and the ``1 + r`` products on the fixed input are computed once per
batch and combined per point (a ``TorchFunctionMode`` sees the layer's call under ``vmap``; the input is
recognised as the same for every point because it is not batched). On a 784-256-256-10 MLP this removes
three quarters of the multiply-adds of every point.

Point by point (the evaluator's CPU path) the same shortcut is :class:`PointProducts`, for the weights that
:class:`PointWeights` writes in place at each point; a call is recognised as acting on the data when its
input is equal at two successive points (and checked at every later one).

Switched off with ``GridEvaluator(..., cache_products=False)`` (for benchmarks and tests).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from lightning_landscape._torch import is_batched_tensor, version_counter

_is_batched: Any = is_batched_tensor
_CONVS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}


class AffineLayers(TorchFunctionMode):
    """Under ``vmap``: a Linear/Conv on an unbatched input with a point's weight, from products cached per
    batch (see the module docstring). Every other call runs as it is."""

    def __init__(self) -> None:
        super().__init__()
        self.points: dict[int, tuple[str, Tensor, Tensor, Tensor]] = {}  # id(weight) -> name, W0, D, c
        self.cache: dict[tuple[Any, ...], tuple[Tensor, Tensor, float]] = {}
        self.calls: dict[str, int] = {}
        self.real: dict[int, Tensor] = {}
        self.keep: list[Tensor] = []
        self.batch = 0

    def placeholder(self, name: str, base: Tensor, stacked: Tensor, coef: Tensor) -> Tensor:
        """A stand-in for the point's weight: a batched view of zeros that costs no memory. A layer that
        takes the shortcut never reads it; any other use gets the real weight, built once per forward."""
        stand_in = (coef[:1] * 0).reshape([1] * base.dim()).expand(base.shape)
        self.points[id(stand_in)] = (name, base, stacked, coef)
        self.keep.append(stand_in)  # alive until the next forward, so that its id stays unique
        return stand_in

    def new_forward(self) -> None:
        self.points.clear()
        self.real.clear()
        self.calls.clear()
        self.keep.clear()

    def _real(self, arg: Any) -> Any:
        if isinstance(arg, Tensor) and id(arg) in self.points:
            key = id(arg)
            if key not in self.real:
                _, base, stacked, coef = self.points[key]
                self.real[key] = base + torch.tensordot(coef, stacked, dims=1)
            return self.real[key]
        return arg

    def _substitute(self, obj: Any) -> Any:
        if isinstance(obj, (tuple, list)):
            return type(obj)(self._substitute(o) for o in obj)
        if isinstance(obj, dict):
            return {k: self._substitute(v) for k, v in obj.items()}
        return self._real(obj)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if (func is F.linear or func in _CONVS) and _is_batched is not None and len(args) >= 2:
            out = self._shortcut(func, args, kwargs)
            if out is not None:
                return out
        if self.points and getattr(func, "__name__", "") != "__get__":  # shape/dtype reads need no weight
            args, kwargs = self._substitute(args), self._substitute(kwargs)
        return func(*args, **kwargs)

    def _shortcut(self, func: Any, args: Any, kwargs: Any) -> Tensor | None:
        x, weight = args[0], args[1]
        entry = self.points.get(id(weight))
        if entry is None or not isinstance(x, Tensor) or _is_batched(x):
            return None
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        rest = tuple(args[3:])
        extra = {k: v for k, v in kwargs.items() if k != "bias"}
        if func is not F.linear and (rest[3] if len(rest) > 3 else extra.get("groups", 1)) != 1:
            return None
        name, base, stacked, coef = entry
        # A moving bias is folded into the products: f(x; W, b) is linear in (W, b) jointly.
        bias_entry = self.points.get(id(bias)) if isinstance(bias, Tensor) else None
        # The k-th call of one weight on an unbatched input sees the same input at every point of a batch
        # (it depends on the batch only); the checksum guards against a forward that is not deterministic.
        calls = self.calls[name] = self.calls.get(name, 0) + 1
        key: tuple[Any, ...] = (
            self.batch,
            name,
            calls,
            bias_entry is not None,
            tuple(x.shape),
            x.dtype,
            rest,
        )
        key += tuple(sorted(extra.items()))
        checksum = float(x.detach().sum())
        cached = self.cache.get(key)
        if cached is None or not (cached[2] == checksum or (cached[2] != cached[2] and checksum != checksum)):
            r, out_features = stacked.shape[0], stacked.shape[1]
            b0 = db = None
            if bias_entry is not None:
                b0, db = bias_entry[1], bias_entry[2].reshape(-1)
            fixed = func(x, base, b0, *rest, **extra)
            flat = func(x, stacked.reshape(r * out_features, *stacked.shape[2:]), db, *rest, **extra)
            if func is F.linear:  # [..., r * out] -> [r, ..., out]
                per = flat.reshape(*flat.shape[:-1], r, out_features).movedim(-2, 0)
            else:  # [N, r * out, *spatial] -> [r, N, out, *spatial]
                per = flat.reshape(flat.shape[0], r, out_features, *flat.shape[2:]).movedim(1, 0)
            # One product per point: [1, c] against [f(x; W0); f(x; D_1); ...] (no separate pass to add).
            cached = self.cache[key] = (torch.cat([fixed[None], per]), base.new_ones(1), checksum)
        stacked_out, one, _ = cached
        out = torch.tensordot(torch.cat([one, coef]), stacked_out, dims=1)
        if bias is not None and bias_entry is None:
            bias = self._real(bias)
            out = out + (bias if func is F.linear else bias.reshape(-1, *([1] * _CONVS[func])))
        return out


class PointWeights:
    r"""The weights of one point :math:`w_0 + \sum_j c_j d_j` at a time, written in place into tensors that
    stay the same objects from point to point (one pass over the weights per point).

    Points that share their leading coefficients :math:`c_1 .. c_{r-1}` (a row of a plane) share the partial
    sum :math:`w_0 + \sum_{j<r} c_j d_j`, computed once per row; a point then costs one fused
    ``torch.add(row, d_r, alpha=c_r)`` per weight. Directions that are zero for a weight (biases and norm
    layers of filter-normalized directions) cost nothing, and a weight no direction moves is its origin.
    Weights that only feed cached first-layer products are written only when something else reads them
    (:meth:`fill`, called by :class:`PointProducts`).
    """

    def __init__(self, origin: Mapping[str, Tensor], stacked: Mapping[str, Sequence[Tensor]]) -> None:
        self.origin = origin
        self.rank = len(next(iter(stacked.values()))) if stacked else 0
        self.dirs: dict[str, list[tuple[int, Tensor]]] = {}
        self.tensors: dict[str, Tensor] = {}  # what the forward sees, by name
        self.rows: dict[str, Tensor] = {}  # the row's partial sum, where a last direction moves the weight
        for name, base in origin.items():
            dirs = [(j, d) for j, d in enumerate(stacked[name])] if name in stacked else []
            dirs = [(j, d) for j, d in dirs if bool(d.any())]
            self.dirs[name] = dirs
            self.tensors[name] = torch.empty_like(base) if dirs else base
            if dirs and dirs[-1][0] == self.rank - 1 and len(dirs) > 1:
                self.rows[name] = torch.empty_like(base)
        self.names = {id(t): n for n, t in self.tensors.items() if self.dirs[n]}
        self.lead: tuple[float, ...] | None = None
        self.last = 0.0
        self.row_version = 0
        self.lazy: set[str] = set()  # weights written on demand only (moved by the last direction)
        self.stale: set[str] = set()  # lazy weights not yet written at this point
        # What a new row writes (origin, leading directions, target) and what every point writes.
        self._row_plan: list[tuple[Tensor, list[tuple[int, Tensor]], Tensor]] = []
        for name, dirs in self.dirs.items():
            moving = [(j, d) for j, d in dirs if j < self.rank - 1]
            if moving:
                target = self.rows[name] if self.moves_last(name) else self.tensors[name]
                self._row_plan.append((origin[name], moving, target))
        self._point_plan: list[tuple[Tensor, Tensor, Tensor]] = []
        self.set_lazy(set())

    def set_lazy(self, names: set[str]) -> None:
        """Write the weights ``names`` (moved by the last direction) only on demand (:meth:`fill`)."""
        self.lazy = {n for n in names if self.moves_last(n)}
        self._point_plan = [
            (self.rows.get(n, self.origin[n]), self.dirs[n][-1][1], self.tensors[n])
            for n in self.dirs
            if self.moves_last(n) and n not in self.lazy
        ]

    def move_to(self, coef: list[float]) -> None:
        """Write the weights of the point ``coef`` (length ``rank``)."""
        lead, self.last = tuple(coef[:-1]), coef[-1] if coef else 0.0
        if lead != self.lead:
            self.lead = lead
            self.row_version += 1
            for base, moving, target in self._row_plan:
                torch.add(base, moving[0][1], alpha=lead[moving[0][0]], out=target)
                for j, d in moving[1:]:
                    target.add_(d, alpha=lead[j])
        last = self.last
        for row, direction, out in self._point_plan:
            torch.add(row, direction, alpha=last, out=out)
        if self.lazy:
            self.stale = set(self.lazy)

    def moves_last(self, name: str) -> bool:
        """Whether the last direction moves weight ``name`` (it is then written at every point)."""
        dirs = self.dirs[name]
        return bool(dirs) and dirs[-1][0] == self.rank - 1

    def _write_last(self, name: str) -> None:
        row = self.rows.get(name, self.origin[name])
        torch.add(row, self.dirs[name][-1][1], alpha=self.last, out=self.tensors[name])

    def fill(self, name: str) -> None:
        """Write a lazy weight for the current point (before anything but a cached product reads it)."""
        if name in self.stale:
            self.stale.discard(name)
            self._write_last(name)

    def coefficient(self, j: int) -> float:
        return self.last if j == self.rank - 1 else (self.lead or ())[j]


class _Watched(Tensor):
    """A point's weight as the forward sees it when calls on it may take a shortcut: a view of the written
    tensor whose torch calls go through :class:`PointProducts` (every other call of the forward runs as it
    is). Nothing it returns is a ``_Watched`` tensor."""

    _watch: tuple[PointProducts, str]

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        watched = [a for a in _flat(args, kwargs) if isinstance(a, _Watched)]
        if not watched:  # deeper inside the arguments: no shortcut
            return func(*_plain(args), **_plain(kwargs))
        return watched[0]._watch[0].handle(func, args, kwargs)


def _version(x: Tensor) -> int | None:
    """``x``'s version counter; ``None`` for tensors that keep none (made under ``torch.inference_mode``)."""
    try:
        return version_counter(x)
    except RuntimeError:
        return None


def _flat(args: Any, kwargs: Any) -> list[Any]:
    out: list[Any] = []
    for arg in (*args, *kwargs.values()):
        out.extend(arg if isinstance(arg, (tuple, list)) else (arg,))
    return out


def _plain(obj: Any, fill: bool = True) -> Any:
    """``obj`` with watched weights replaced by the written tensors (written first, unless not ``fill``)."""
    if isinstance(obj, _Watched):
        products, name = obj._watch
        if fill:
            products.weights.fill(name)
        return products.weights.tensors[name]
    if isinstance(obj, (tuple, list)):
        return type(obj)(_plain(o, fill) for o in obj)
    if isinstance(obj, dict):
        return {k: _plain(v, fill) for k, v in obj.items()}
    return obj


class PointProducts:
    """Point by point: a Linear/Conv whose weight moves with the point and whose input does not, from
    products cached per batch (the sequential counterpart of :class:`AffineLayers`).

    The weights it watches (:meth:`watch`) are handed to the forward as views whose torch calls come here.
    A call (the ``k``-th of one weight in a forward, per batch) whose input is equal at two successive
    points is taken to act on the data: its products :math:`f(x; w_0), f(x; d_j)` are computed once and
    combined per point (by rows, as :class:`PointWeights` does); a later point whose input differs (a
    checksum, or the same tensor object unmodified) drops the shortcut for that call for good. A weight all
    of whose calls take the shortcut is written only when something else reads it.
    """

    def __init__(self, weights: PointWeights) -> None:
        self.weights = weights
        self.batch = 0
        self.calls: dict[str, int] = {}
        # (batch, name, k) -> ["seen" | "cached" | "off", x, version, checksum, products, row cache]
        self.state: dict[tuple[int, str, int], list[Any]] = {}
        self.probe: dict[tuple[Any, ...], Tensor] = {}

    def watch(self, names: Any) -> dict[str, Tensor]:
        """Views of the weights ``names`` whose torch calls come to :meth:`handle`."""
        views: dict[str, Tensor] = {}
        for name in names:
            view = self.weights.tensors[name].as_subclass(_Watched)
            view._watch = (self, name)
            views[name] = view
        return views

    def new_forward(self, batch: int) -> None:
        self.batch = batch
        self.calls.clear()

    def shortcut_weights(self) -> set[str]:
        """Weights every call of which is served by cached products (the rest need no watching)."""
        cached = {key[1] for key, s in self.state.items() if s[0] == "cached"}
        return cached - {key[1] for key, s in self.state.items() if s[0] != "cached"}

    def _checksum(self, x: Tensor) -> tuple[float, float]:
        flat = x.detach().reshape(-1)
        key = (flat.numel(), x.dtype, x.device)
        probe = self.probe.get(key)
        if probe is None:
            gen = torch.Generator().manual_seed(flat.numel())
            probe = torch.rand(flat.numel(), generator=gen, dtype=x.dtype).to(x.device)  # as large as x
            self.probe[key] = probe
        # The plain sum and a random weighting (invariants such as softmax rows summing to one pass the sum).
        return float(flat.sum()), float(torch.dot(flat, probe))

    def handle(self, func: Any, args: Any, kwargs: Any) -> Any:
        """A torch call on a watched weight: the shortcut where it applies, else the call on plain tensors
        (a lazy weight written first)."""
        if (func is F.linear or func in _CONVS) and len(args) >= 2 and isinstance(args[1], _Watched):
            x = args[0]
            if isinstance(x, Tensor) and not isinstance(x, _Watched):
                out = self._shortcut(func, args[1]._watch[1], _plain(args, False), _plain(kwargs, False))
                if out is not None:
                    return out
        return func(*_plain(args), **_plain(kwargs))

    def _shortcut(self, func: Any, name: str, args: Any, kwargs: Any) -> Tensor | None:
        x = args[0]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        rest = tuple(args[3:])
        extra = {k: v for k, v in kwargs.items() if k != "bias"}
        if func is not F.linear and (rest[3] if len(rest) > 3 else extra.get("groups", 1)) != 1:
            return None
        calls = self.calls[name] = self.calls.get(name, 0) + 1
        key = (self.batch, name, calls)
        entry = self.state.get(key)
        if entry is not None and entry[0] == "off":
            return None
        version = _version(x)
        same_object = entry is not None and entry[1] is x and version is not None and entry[2] == version
        checksum = entry[3] if same_object else self._checksum(x)  # type: ignore[index]
        if entry is None:
            self.state[key] = ["seen", x, version, checksum, None, None]
            return None
        if not same_object and checksum != entry[3]:
            entry[0] = "off"
            return None
        if entry[0] == "seen":
            entry[0], entry[4] = "cached", self._products(func, name, x, bias, rest, extra)
        return self._combine(entry, func, bias)

    def _products(self, func: Any, name: str, x: Tensor, bias: Any, rest: Any, extra: Any) -> Any:
        w = self.weights
        bias_name = w.names.get(id(bias)) if isinstance(bias, Tensor) else None
        b0 = w.origin[bias_name] if bias_name is not None else None
        fixed = func(x, w.origin[name], b0, *rest, **extra)
        dirs = dict(w.dirs[name])
        bias_dirs = dict(w.dirs[bias_name]) if bias_name is not None else {}
        per = []
        for j in sorted(set(dirs) | set(bias_dirs)):
            d = dirs.get(j, torch.zeros_like(w.origin[name]))
            per.append((j, func(x, d, bias_dirs.get(j), *rest, **extra)))
        return fixed, per, bias_name is not None

    def _combine(self, entry: list[Any], func: Any, bias: Any) -> Tensor:
        w = self.weights
        fixed, per, bias_moves = entry[4]
        lead = [(j, p) for j, p in per if j < w.rank - 1]
        last = [p for j, p in per if j == w.rank - 1]
        row = fixed
        if lead:
            if entry[5] is None or entry[5][0] != w.row_version:
                row = fixed.clone()
                for j, p in lead:
                    row.add_(p, alpha=w.coefficient(j))
                entry[5] = (w.row_version, row)
            row = entry[5][1]
        out = torch.add(row, last[0], alpha=w.last) if last else row.clone()
        if bias is not None and not bias_moves:
            out = out + (bias if func is F.linear else bias.reshape(-1, *([1] * _CONVS[func])))
        return out


__all__ = ["AffineLayers", "PointProducts", "PointWeights"]
