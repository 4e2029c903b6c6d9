"""A network's :class:`PermutationSpec`, derived from its ``torch.fx`` graph.

Every tensor of the traced graph carries a label for the one axis that hidden-unit permutations act on:
``None`` (not permuted: the input, anything computed from it and unpermuted parameters only), an ``_Axis`` (a
permutation group acting on dimension 1, channels, or -1, features), a parameter read by ``get_attr``, or a
tuple (``nn.MultiheadAttention``'s outputs). Producers (Linear, Conv, Embedding, attention) open a new group;
element-wise ops pass the label on; residual additions merge groups (union-find), and the graph's outputs fix
theirs. Any other op that meets a permuted axis is refused by name, since permuting through it could change
the function. Batched inputs are assumed (channels at dimension 1 for Conv/BatchNorm/pooling, features last
for Linear/LayerNorm/attention; a BatchNorm1d after a Linear sees ``(N, C)``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from lightning_landscape.landscape._permutation_spec import (
    AxisEntry,
    Groups,
    PermutationSpec,
    Role,
    refuse,
    rescalable,
)


@dataclass(frozen=True)
class _Axis:
    group: int
    dim: int  # 1 (channels) or -1 (features)
    ndim: int | None = None
    flat: bool = False  # flattened channels: blocks of size in_features // units on the last axis


@dataclass(frozen=True)
class _Param:
    name: str


@dataclass(frozen=True)
class _Opaque:
    why_where: str

    @property
    def why(self) -> str:
        return f"uses per-head attention weights from {self.why_where}"


_PASS = (nn.Identity, nn.Dropout, nn.ReLU, nn.LeakyReLU)  # positively homogeneous element-wise
_ELEMENTWISE = (nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.ELU, nn.Softplus, nn.Mish, nn.Hardtanh, nn.ReLU6)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_HOMOGENEOUS_FNS: set[Callable[..., Any]] = {F.relu, torch.relu, F.leaky_relu, F.dropout}
_ELEMENTWISE_FNS: set[Callable[..., Any]] = {F.gelu, torch.tanh, torch.sigmoid, F.silu, F.elu, F.softplus}
_SAME_FNS = {"relu", "dropout", "contiguous", "clone", "detach", "to", "float", "double"}
_ELEMENTWISE_METHODS = {"tanh", "sigmoid"}
_ADD_FNS: set[Callable[..., Any]] = {operator.add, operator.iadd, torch.add, operator.sub, torch.sub}
_MUL_FNS: set[Callable[..., Any]] = {operator.mul, operator.imul, torch.mul, operator.truediv, torch.div}
_SHAPE_FNS: set[Callable[..., Any]] = {getattr, len}
_ATTENTION_OPS = ("transpose", "matmul", "bmm", "permute", "scaled_dot_product_attention", "einsum")
_SHAPE = "shape"  # the label of sizes and numbers computed from them
_SCALAR_MODULES = ("_operator", "math", "builtins")


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"module `{node.target}` ({type(modules[str(node.target)]).__name__})"
    if node.op == "call_method":
        return f"node `{node.name}` (method `.{node.target}()`)"
    return f"node `{node.name}` ({getattr(node.target, '__name__', node.target)})"


def _nodes(value: Any) -> list[fx.Node]:
    found: list[fx.Node] = []

    def keep(n: fx.Node) -> fx.Node:
        found.append(n)
        return n

    fx.map_arg(value, keep)
    return found


class _Deriver:
    def __init__(self, model: nn.Module) -> None:
        self.modules = dict(model.named_modules(remove_duplicate=False))
        self.canonical: dict[int, str] = {}
        for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]:
            self.canonical.setdefault(id(t), name)
        self.tensors = {n: t for n, t in [*model.named_parameters(), *model.named_buffers()]}
        self.groups = Groups()
        self.entries: dict[tuple[str, int, int], tuple[int, int, Role]] = {}
        self.labels: dict[fx.Node, Any] = {}
        self.probes: dict[int, list[tuple[str, int]]] = {}
        self.calls: dict[str, int] = {}
        self.loose: dict[str, str] = {}  # parameters used outside the rules -> where

    def entry(
        self, module: str, attr: str, axis: int, g: int, role: Role, block: int = 1, offset: int = 0
    ) -> None:
        t = getattr(self.modules[module], attr, None)
        if not isinstance(t, torch.Tensor):
            return
        name = self.canonical[id(t)]
        key = (name, axis, offset)
        if key in self.entries:  # a shared module or tied weight: both uses must permute alike
            self.groups.union(self.entries[key][0], g, f"tensor `{name}`")
        else:
            self.entries[key] = (g, block, role)

    def label(self, arg: Any) -> Any:
        return self.labels.get(arg) if isinstance(arg, fx.Node) else None

    def axis_in(self, node: fx.Node, arg: Any, dims: tuple[int, ...], rows: bool = False) -> _Axis | None:
        """The label of an input that must be unpermuted or an :class:`_Axis` on one of ``dims`` (with
        ``rows``, features last count as channels of an ``(N, C)`` tensor)."""
        label = self.label(arg)
        if label is None or label == _SHAPE:
            return None
        if not isinstance(label, _Axis):
            raise refuse(_describe(node, self.modules), "receives an attention tuple or parameter")
        dim = -1 if label.dim == 1 and label.ndim == 2 else label.dim
        ok = dim in dims or (rows and dim == -1 and label.ndim in (2, None) and not label.flat)
        if not ok:
            raise refuse(_describe(node, self.modules), f"expects its units on dim {dims}, not on dim {dim}")
        return label

    def run(self, graph: fx.Graph) -> PermutationSpec:
        for node in graph.nodes:
            self.labels[node] = self.visit(node)
        for key, (g, _, _) in self.entries.items():
            if key[0] in self.loose and not self.groups.fixed[self.groups.find(g)]:
                where, why = self.loose[key[0]], f"uses the permuted tensor `{key[0]}` outside a known layer"
                raise refuse(where, why, "read the tensor only through its layer")
        return self.spec()

    def visit(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            return None
        if node.op == "get_attr":
            return _Param(str(node.target))
        if node.op == "output":
            self.output(node, node.args[0])
            return None
        if node.op == "call_module":
            module = self.modules[str(node.target)]
            label = self.module(node, str(node.target), module)
            self.calls[str(node.target)] = self.calls.get(str(node.target), 0) + 1
            if isinstance(label, _Axis) and not label.flat:
                self.probes.setdefault(label.group, []).append((str(node.target), label.dim))
            return label
        return self.function(node)

    def output(self, node: fx.Node, value: Any) -> None:
        labels = [self.labels[n] for n in _nodes(value)]
        while labels:
            label = labels.pop()
            if isinstance(label, tuple):
                labels.extend(label)
            elif isinstance(label, _Axis):
                self.groups.fix(label.group)
            elif isinstance(label, _Param):
                self.loose.setdefault(label.name, "the graph's output")
            elif label is not None and label != _SHAPE:
                raise refuse("the graph's output", "returns per-head attention weights")

    def new(self, size: int, name: str) -> int:
        return self.groups.new(size, name)

    def module(self, node: fx.Node, name: str, m: nn.Module) -> Any:
        where = _describe(node, self.modules)
        x = node.args[0] if node.args else None
        if isinstance(m, nn.Linear):
            label = self.axis_in(node, x, (-1,))
            if label is not None:
                units = self.groups.size[self.groups.find(label.group)]
                block = m.in_features // units if label.flat else 1
                if units * block != m.in_features:
                    raise refuse(where, f"takes {m.in_features} features from an axis of {units} units")
                self.entry(name, "weight", 1, label.group, "in", block)
            g = self.new(m.out_features, name)
            self.entry(name, "weight", 0, g, "out")
            self.entry(name, "bias", 0, g, "out")
            return _Axis(g, -1, label.ndim if label is not None else None)
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            label = self.axis_in(node, x, (1,))
            if m.groups != 1:
                raise refuse(where, f"is a grouped convolution (groups={m.groups})")
            if label is not None:
                units = self.groups.size[self.groups.find(label.group)]
                if units != m.in_channels:
                    raise refuse(where, f"takes {m.in_channels} channels from an axis of {units} units")
                self.entry(name, "weight", 1, label.group, "in")
            g = self.new(m.out_channels, name)
            self.entry(name, "weight", 0, g, "out")
            self.entry(name, "bias", 0, g, "out")
            return _Axis(g, 1, 3 if isinstance(m, nn.Conv1d) else 4)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
            is_ln = isinstance(m, nn.LayerNorm)
            label = self.axis_in(node, x, (-1,) if is_ln else (1,), rows=not is_ln)
            if label is not None:
                units = self.groups.size[self.groups.find(label.group)]
                shape = tuple(m.normalized_shape) if isinstance(m, nn.LayerNorm) else (m.num_features,)
                if shape != (units,):
                    raise refuse(where, f"normalizes shape {shape}, not the {units} units")
                self.groups.inhomogeneous(label.group)
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    self.entry(name, attr, 0, label.group, "other")
            return label
        if isinstance(m, nn.Embedding):
            if self.label(x) is not None:
                raise refuse(where, "receives a permuted tensor as indices")
            g = self.new(m.embedding_dim, name)
            self.entry(name, "weight", 1, g, "out")
            return _Axis(g, -1)
        if isinstance(m, nn.MultiheadAttention):
            return self.attention(node, name, m)
        if isinstance(m, nn.Flatten):
            return self.flatten(node, x, m.start_dim, m.end_dim)
        if isinstance(m, _PASS + _ELEMENTWISE + _POOLS):
            label = self.axis_in(node, x, (1,) if isinstance(m, _POOLS) else (1, -1))
            if label is not None and isinstance(m, _ELEMENTWISE):
                self.groups.inhomogeneous(label.group)
            return label
        return self.unknown(node)

    def attention(self, node: fx.Node, name: str, m: nn.MultiheadAttention) -> Any:
        args = [*node.args, *[None] * 8]
        q, k, v = (node.kwargs.get(key, args[i]) for i, key in enumerate(("query", "key", "value")))
        for key, pos in (("key_padding_mask", 3), ("attn_mask", 5)):
            if self.label(node.kwargs.get(key, args[pos])) is not None:
                raise refuse(_describe(node, self.modules), f"receives a permuted `{key}`")
        labels = [self.axis_in(node, t, (-1,)) for t in (q, k, v)]
        packed = m.in_proj_weight is not None
        if packed and any(lb is not None for lb in labels):  # one weight reads all three inputs
            joined = [lb.group for lb in labels if lb is not None]
            for g in joined[1:]:
                self.groups.union(joined[0], g, _describe(node, self.modules))
            if any(lb is None for lb in labels):
                self.groups.fix(joined[0])
        for lb in labels:
            if lb is not None:
                self.groups.inhomogeneous(lb.group)
        e, hd = m.embed_dim, m.head_dim
        heads = self.new(m.num_heads, f"{name}.heads")
        self.groups.inhomogeneous(heads)
        for i, attr in enumerate(("q_proj_weight", "k_proj_weight", "v_proj_weight")):
            if packed:
                self.entry(name, "in_proj_weight", 0, heads, "other", hd, i * e)
                if labels[i] is not None:
                    self.entry(name, "in_proj_weight", 1, labels[i].group, "other")  # type: ignore[union-attr]
            else:
                self.entry(name, attr, 0, heads, "other", hd)
                if labels[i] is not None:
                    self.entry(name, attr, 1, labels[i].group, "other")  # type: ignore[union-attr]
            self.entry(name, "in_proj_bias", 0, heads, "other", hd, i * e)
        self.entry(name, "bias_k", 2, heads, "other", hd)
        self.entry(name, "bias_v", 2, heads, "other", hd)
        self.entry(f"{name}.out_proj", "weight", 1, heads, "other", hd)
        out = self.new(e, f"{name}.out_proj")
        self.groups.inhomogeneous(out)
        self.entry(f"{name}.out_proj", "weight", 0, out, "other")
        self.entry(f"{name}.out_proj", "bias", 0, out, "other")
        averaged = node.kwargs.get("average_attn_weights", True if args[6] is None else args[6])
        first = labels[0]
        return (_Axis(out, -1, first.ndim if first is not None else None), None if averaged else "heads")

    def flatten(self, node: fx.Node, x: Any, start: Any, end: Any) -> Any:
        label = self.label(x)
        if label is None:
            return None
        where = _describe(node, self.modules)
        if not isinstance(label, _Axis) or start != 1 or end != -1:
            raise refuse(
                where, f"flattens dims {start}..{end} of a permuted tensor (only from dim 1 is supported)"
            )
        if label.dim == 1:
            return _Axis(label.group, -1, 2, flat=label.ndim != 2)
        if label.ndim == 2:
            return label
        raise refuse(where, "flattens a tensor whose permuted axis is last, so units would interleave")

    def function(self, node: fx.Node) -> Any:
        target, args = node.target, node.args
        name = target if node.op == "call_method" else None
        if target in _SHAPE_FNS or name in ("size", "dim"):
            return _SHAPE
        if target is operator.getitem and isinstance(self.label(args[0]), tuple):
            item = self.labels[args[0]][args[1]]  # type: ignore[index]
            return item if item != "heads" else _Opaque(_describe(node, self.modules))
        if (
            target in _HOMOGENEOUS_FNS
            or target in _ELEMENTWISE_FNS
            or name in _SAME_FNS | _ELEMENTWISE_METHODS
        ):
            label = self.axis_in(node, args[0], (1, -1))
            if label is not None and (target in _ELEMENTWISE_FNS or name in _ELEMENTWISE_METHODS):
                self.groups.inhomogeneous(label.group)
            return label
        if target is torch.flatten or name == "flatten":
            start = node.kwargs.get("start_dim", args[1] if len(args) > 1 else 0)
            return self.flatten(
                node, args[0], start, node.kwargs.get("end_dim", args[2] if len(args) > 2 else -1)
            )
        if target in _ADD_FNS or target in _MUL_FNS or name in ("add", "sub", "mul", "div"):
            return self.binary(node, target in _MUL_FNS or name in ("mul", "div"))
        return self.unknown(node)

    def binary(self, node: fx.Node, product: bool) -> Any:
        where = _describe(node, self.modules)
        a, b = node.args[:2] if len(node.args) > 1 else (node.args[0], node.kwargs.get("other"))
        la, lb = self.label(a), self.label(b)
        if isinstance(lb, _Axis) and not isinstance(la, _Axis):
            a, b, la, lb = b, a, lb, la
            if product and node.target in (operator.truediv, torch.div, "div"):
                self.groups.inhomogeneous(la.group)  # c / x is not positively homogeneous
        if not isinstance(la, _Axis):
            return self.unknown(node)
        if isinstance(lb, _Axis):
            if (la.dim, la.flat) != (lb.dim, lb.flat):
                raise refuse(where, "combines tensors permuted on different dims")
            self.groups.union(la.group, lb.group, where)
            if product:
                self.groups.inhomogeneous(la.group)
        elif isinstance(lb, _Param):
            t = self.tensors.get(lb.name)
            axis = t.dim() - 1 if la.dim == -1 and t is not None else 1  # channels: t shaped like the tensor
            if t is None or t.dim() == 0 or (la.dim == 1 and t.dim() != la.ndim):
                raise refuse(where, f"combines a permuted tensor with `{lb.name}`")
            self.groups.inhomogeneous(la.group)
            if t.shape[axis] != 1:
                if t.shape[axis] != self.groups.size[self.groups.find(la.group)]:
                    raise refuse(where, f"broadcasts `{lb.name}` against the permuted axis")
                module, _, attr = lb.name.rpartition(".")
                self.entry(module, attr, axis, la.group, "other")
        elif lb is None and isinstance(b, fx.Node):  # an unpermuted tensor: only an unpermuted axis is safe
            self.groups.fix(la.group)
        elif lb is None or lb == _SHAPE:  # a number; a shift by one breaks positive homogeneity
            if not product:
                self.groups.inhomogeneous(la.group)
        else:
            raise refuse(where, "combines a permuted tensor with attention outputs")
        return la

    def unknown(self, node: fx.Node) -> Any:
        labels = [self.labels[n] for n in _nodes((node.args, node.kwargs))]
        if (
            all(label == _SHAPE for label in labels)
            and getattr(node.target, "__module__", "") in _SCALAR_MODULES
        ):
            return _SHAPE  # arithmetic on sizes, e.g. x.size(-1) ** 0.5
        for label in labels:
            if label is None or label == _SHAPE:
                continue
            if isinstance(label, _Param):
                self.loose.setdefault(label.name, _describe(node, self.modules))
            elif label is not None:
                reason = (
                    label.why if isinstance(label, _Opaque) else "is not known to commute with permutations"
                )
                name = str(getattr(node.target, "__name__", node.target))
                hint = "nn.MultiheadAttention for attention" if name in _ATTENTION_OPS else None
                raise refuse(_describe(node, self.modules), reason, *([hint] if hint else []))
        return None

    def spec(self) -> PermutationSpec:
        groups = self.groups
        roots = sorted({groups.find(g) for g, _, _ in self.entries.values()})
        names = {r: groups.name[r] for r in roots if not groups.fixed[r]}
        entries = tuple(
            AxisEntry(name, axis, names[groups.find(g)], block, offset, role)
            for (name, axis, offset), (g, block, role) in self.entries.items()
            if groups.find(g) in names
        )
        probes: dict[str, list[tuple[str, int]]] = {}
        for g, found in self.probes.items():
            if groups.find(g) in names:
                shared = [p for p in found if self.calls[p[0]] == 1]  # a hook sees one call per forward
                probes.setdefault(names[groups.find(g)], []).extend(shared)
        sizes = {names[r]: groups.size[r] for r in roots if r in names}
        homogeneous = [names[r] for r in roots if r in names and groups.homogeneous[r]]
        return PermutationSpec(
            sizes, entries, rescalable(homogeneous, entries), {k: tuple(v) for k, v in probes.items()}
        )


def derive_spec(model: nn.Module) -> PermutationSpec:
    """The permutation spec of ``model`` from its ``torch.fx`` graph.

    Raises:
        ValueError: if ``model`` cannot be traced, or an op on a permuted axis is not known to commute.
    """
    try:
        graph = fx.Tracer().trace(model)
    except Exception as err:  # fx raises many types (TraceError, TypeError, NotImplementedError, ...)
        raise ValueError(
            f"align derives the permutation structure by torch.fx symbolic tracing, which fails on "
            f"{type(model).__name__} ({type(err).__name__}: {err}). Make forward traceable (no control flow "
            "on tensor values), or compare the models without alignment."
        ) from err
    return _Deriver(model).run(graph)
