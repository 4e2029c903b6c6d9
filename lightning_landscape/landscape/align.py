r"""Alignment of two networks up to the symmetries of their hidden units, and the distance between functions.

Permuting the hidden units of a network (and, behind positively homogeneous activations such as ReLU,
multiplying a unit's incoming weights and bias by :math:`c > 0` and its outgoing weights by :math:`1/c`)
leaves its function unchanged, so two copies of one minimum can sit far apart in weight space with a high
barrier between them (Entezari et al. 2022; Ainsworth et al. 2023, "Git Re-Basin"). :func:`align` moves one
network onto the other along these symmetries; :func:`functional_distance` compares what they compute.

The permutation structure (which permutation acts on which axis of which parameter) is derived from the
module's ``torch.fx`` graph: Linear, Conv1d/2d, BatchNorm, LayerNorm, Embedding, ``nn.MultiheadAttention``
(heads move as blocks), element-wise activations, Dropout, Identity, pooling, ``flatten`` from dim 1 (a
convolution's channels move as blocks of the following Linear's columns) and residual additions (a residual
stream shares one permutation). The network's input and output axes never move. Anything else that touches a
permuted axis is refused by name.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_landscape.curvature._checks import check_choice, check_int
from lightning_landscape.landscape._derive_spec import derive_spec
from lightning_landscape.landscape._matching import (
    Correlations,
    State,
    normalize,
    permute,
    scale,
    weight_matching,
)
from lightning_landscape.landscape._permutation_spec import PermutationSpec

AlignMethod = Literal["weights", "activations"]
_METHODS = ("weights", "activations")
_KINDS = ("auto", "disagreement", "rms")


@dataclass(frozen=True)
class AlignResult:
    """What :func:`align` found.

    Attributes:
        model: a deep copy of ``other`` (same modes and ``requires_grad``, ``.grad`` cleared) with its hidden
            units permuted and, where positively homogeneous, rescaled to match ``reference``; it computes
            the same function as ``other``.
        permutations: per permutation group (named after the module that opens it, e.g. ``"net.0"`` or
            ``"attn.heads"``), a LongTensor ``perm``: unit ``i`` of ``model`` is unit ``perm[i]`` of
            ``other``.
        scales: per rescaled group, float64 factors: unit ``i`` of ``model`` has the incoming weights and bias
            of ``other``'s unit ``perm[i]`` times ``scales[i]`` and its outgoing weights divided by it. Empty
            when nothing is rescaled.
        method: ``"weights"`` or ``"activations"``.
        sweeps: coordinate-descent sweeps of weight matching (0 where no group was weight matched).
    """

    model: nn.Module
    permutations: dict[str, Tensor]
    scales: dict[str, Tensor] = field(default_factory=dict)
    method: str = "weights"
    sweeps: int = 0


def _state(model: nn.Module, spec: PermutationSpec) -> State:
    names = {e.name for e in spec.entries}
    tensors = dict([*model.named_parameters(), *model.named_buffers()])
    return {n: tensors[n].detach().to(torch.float64) for n in names}


def _check_models(reference: Any, other: Any) -> None:
    for name, m in (("reference", reference), ("other", other)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"`{name}` must be a torch.nn.Module, got {type(m).__name__}.")
    shapes = [
        {n: tuple(t.shape) for n, t in [*m.named_parameters(), *m.named_buffers()]}
        for m in (reference, other)
    ]
    if shapes[0] != shapes[1]:
        diff = sorted(set(shapes[0].items()) ^ set(shapes[1].items()))
        raise ValueError(
            "`other` must have the architecture of `reference` (the same parameters and buffers, by name and "
            f"shape); they differ in {diff[:5]}."
        )


def _activation_perms(
    spec: PermutationSpec,
    models: tuple[nn.Module, nn.Module],
    batches: list[Any],
    loss_fn: Callable[[nn.Module, Any], Any],
) -> dict[str, Tensor]:
    """Per group with probes, the assignment of correlated activations, from eval-mode copies."""
    copies = [copy.deepcopy(m).eval() for m in models]
    seen: list[dict[tuple[str, int], Tensor]] = [{}, {}]
    handles = []
    for side, clone in enumerate(copies):
        modules = dict(clone.named_modules())
        for group, probes in spec.probes.items():
            for i, (name, _) in enumerate(probes):

                def hook(_m: nn.Module, _i: Any, out: Any, key: Any = (group, i), side: int = side) -> None:
                    seen[side][key] = out.detach().clone()  # later in-place ops must not change it

                handles.append(modules[name].register_forward_hook(hook))
    correlations = Correlations(spec.sizes)
    devices = sorted({p.device.index or 0 for m in models for p in m.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            for batch in batches:
                for side, clone in enumerate(copies):
                    seen[side].clear()
                    loss_fn(clone, batch)
                for key, a in seen[0].items():
                    if key in seen[1]:
                        correlations.add(*key, a, seen[1][key], spec.probes[key[0]][key[1]][1])
    finally:
        for h in handles:
            h.remove()
    return correlations.permutations()


def align(
    reference: nn.Module,
    other: nn.Module,
    method: AlignMethod = "weights",
    batches: Iterable[Any] | None = None,
    loss_fn: Callable[[nn.Module, Any], Any] | None = None,
    *,
    max_iter: int = 100,
    seed: int = 0,
    rescale: bool = True,
) -> AlignResult:
    r"""A copy of ``other`` with its hidden units permuted (and rescaled) to match ``reference``.

    The permutation structure comes from tracing ``reference`` with ``torch.fx`` (see the module docstring for
    what is understood). With ``rescale`` (default), every hidden unit behind positively homogeneous
    activations only (ReLU, LeakyReLU, Identity, pooling; not through BatchNorm, LayerNorm, GELU, attention,
    and not a residual stream fed by several layers) is first normalized to incoming norm 1 in both networks,
    so the matching ignores rescalings; the result then takes ``reference``'s norms.

    * ``method="weights"``: weight matching, no data. Coordinate descent over the permutation groups (seeded
      random order), each step one linear assignment maximizing :math:`\langle \theta_{ref}, \pi(\theta)
      \rangle`, until a sweep gains nothing or after ``max_iter`` sweeps.
    * ``method="activations"``: ``loss_fn(model, batch)`` runs on eval-mode copies of both networks for every
      batch, forward hooks record the outputs of the modules that carry each group, and each group's units
      are assigned by the summed Pearson correlation of their activations. Groups no module output carries
      (attention heads) are then weight matched with the others held.

    Args:
        reference: the network to match (never modified).
        other: the network to move, same architecture (never modified).
        method: ``"weights"`` or ``"activations"``.
        batches: the batches of ``"activations"`` (ignored by ``"weights"``).
        loss_fn: ``loss_fn(model, batch)``, called for its forward pass only (``"activations"``; ignored by
            ``"weights"``).
        max_iter: the most sweeps of weight matching (``>= 1``).
        seed: seed of the sweep order (``>= 0``); the global RNG is not touched.
        rescale: normalize positively homogeneous units before matching and map to ``reference``'s scale.

    Returns:
        An :class:`AlignResult` whose ``model`` computes the same function as ``other``.

    Raises:
        TypeError: if a model is not an ``nn.Module`` or ``rescale`` is not a bool.
        ValueError: for a bad ``method``, ``max_iter``, ``seed``, missing ``batches``/``loss_fn`` for
            ``"activations"``, models of different architectures, or a model whose permutation structure
            cannot be derived (the message names the module or node and why).

    Example:
        >>> torch.manual_seed(0) and None
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> twin = copy.deepcopy(net)
        >>> perm = torch.randperm(8)
        >>> with torch.no_grad():  # the same function, hidden units shuffled and rescaled by 2
        ...     _ = twin[0].weight.copy_(2 * net[0].weight[perm]), twin[0].bias.copy_(2 * net[0].bias[perm])
        ...     _ = twin[2].weight.copy_(net[2].weight[:, perm] / 2)
        >>> result = align(net, twin)
        >>> torch.equal(perm[result.permutations["0"]], torch.arange(8)), result.scales["0"].tolist()[:2]
        (True, [0.5, 0.5])
        >>> torch.allclose(result.model[0].weight, net[0].weight)
        True
    """
    _check_models(reference, other)
    check_choice("method", method, _METHODS)
    check_int("max_iter", max_iter)
    check_int("seed", seed, minimum=0)
    if not isinstance(rescale, bool):
        raise TypeError(f"`rescale` must be a bool, got {type(rescale).__name__}.")
    data: list[Any] = []
    if method == "activations":
        if batches is None:
            raise ValueError('`batches` is required for method="activations": a non-empty list of batches.')
        if loss_fn is None or not callable(loss_fn):
            raise ValueError('`loss_fn` is required for method="activations": loss_fn(model, batch).')
        data = list(batches)
        if not data:
            raise ValueError('`batches` must hold at least one batch for method="activations", got none.')
    spec = derive_spec(reference)
    if not rescale:
        spec = PermutationSpec(spec.sizes, spec.entries, (), spec.probes)
    state_a, norms_a = normalize(_state(reference, spec), spec)
    state_b = {k: v.to(state_a[k].device) for k, v in _state(other, spec).items()}
    state_b, norms_b = normalize(state_b, spec)
    perms, sweeps = {}, 0
    if method == "activations":
        perms = _activation_perms(spec, (reference, other), data, loss_fn)  # type: ignore[arg-type]
    missing = [g for g in spec.sizes if g not in perms]
    if missing:
        perms, sweeps = weight_matching(
            spec, state_a, state_b, max_iter=max_iter, seed=seed, groups=missing, init=perms
        )
    aligned = permute(state_b, spec, perms)
    for g in spec.rescalable:
        aligned = scale(aligned, spec, g, norms_a[g])
    model = copy.deepcopy(other)
    tensors = dict([*model.named_parameters(), *model.named_buffers()])
    with torch.no_grad():
        for name, value in aligned.items():
            tensors[name].copy_(value)
    for p in model.parameters():
        p.grad = None
    scales = {g: norms_a[g] / norms_b[g][perms[g]] for g in spec.rescalable}
    return AlignResult(model, perms, scales, method, sweeps)


def _forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)) and batch:
        return model(batch[0])
    raise TypeError(
        f"cannot call the model on a batch of type {type(batch).__name__}: pass `forward(model, batch)`."
    )


@dataclass(frozen=True)
class FunctionalDistance:
    """A distance between two networks' functions; ``float(d)`` is ``d.value``.

    Attributes:
        value: the disagreement rate (fraction of predictions whose argmax differs) or the RMS distance
            between the outputs.
        kind: ``"disagreement"`` or ``"rms"``.
        count: predictions compared (``"disagreement"``) or output entries compared (``"rms"``).
    """

    value: float
    kind: str
    count: int

    def __float__(self) -> float:
        return self.value


def functional_distance(
    model_a: nn.Module,
    model_b: nn.Module,
    batches: Iterable[Any],
    forward: Callable[[nn.Module, Any], Tensor] | None = None,
    kind: Literal["auto", "disagreement", "rms"] = "auto",
) -> FunctionalDistance:
    r"""How differently two networks compute on ``batches``: disagreement for classifiers, RMS otherwise.

    .. math::

        d_{dis} = \frac{1}{N} \sum_i [\arg\max f_a(x_i) \ne \arg\max f_b(x_i)], \qquad
        d_{rms} = \Big(\frac{1}{N d} \sum_{i,j} (f_a(x_i)_j - f_b(x_i)_j)^2\Big)^{1/2}

    Outputs come from ``forward(model, batch)``, by default ``model(batch)`` for a tensor batch,
    ``model(batch[0])`` for a tuple or list (inputs first, targets ignored) and ``model(**batch)`` for a dict.
    Both models run in eval mode without gradients; modes, weights and the global RNG are left as found.
    ``kind="auto"`` takes ``"disagreement"`` when the outputs have at least two dimensions and the last is
    larger than 1 (class scores), else ``"rms"`` (regression, including outputs of shape ``[N]``). The
    argmax is over the last dimension, every other position counts as one prediction.

    Args:
        model_a, model_b: the two networks.
        batches: a non-empty iterable of batches.
        forward: ``forward(model, batch) -> Tensor``; see above for the default.
        kind: ``"auto"``, ``"disagreement"`` or ``"rms"``.

    Returns:
        A :class:`FunctionalDistance` (``float(...)`` gives the value).

    Raises:
        TypeError: if a model is not an ``nn.Module``, ``forward`` is not callable, or an output is not a
            tensor.
        ValueError: for a bad ``kind``, no batches, or outputs of different shapes.

    Example:
        >>> torch.manual_seed(0) and None
        >>> a, b = nn.Linear(4, 3), nn.Linear(4, 3)
        >>> x = torch.randn(64, 4)
        >>> functional_distance(a, a, [x]).value, functional_distance(a, b, [(x, None)]).kind
        (0.0, 'disagreement')
    """
    for name, m in (("model_a", model_a), ("model_b", model_b)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"`{name}` must be a torch.nn.Module, got {type(m).__name__}.")
    check_choice("kind", kind, _KINDS)
    if forward is not None and not callable(forward):
        raise TypeError(f"`forward` must be callable forward(model, batch), got {type(forward).__name__}.")
    data = list(batches)
    if not data:
        raise ValueError("`batches` must hold at least one batch, got none.")
    call = forward or _forward
    modes = [(m, m.training) for model in (model_a, model_b) for m in model.modules()]
    devices = sorted({p.device.index or 0 for m in (model_a, model_b) for p in m.parameters() if p.is_cuda})
    total, count, chosen = 0.0, 0, kind
    try:
        model_a.eval()
        model_b.eval()
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            for batch in data:
                out_a, out_b = call(model_a, batch), call(model_b, batch)
                if not isinstance(out_a, Tensor) or not isinstance(out_b, Tensor):
                    raise TypeError("the outputs must be tensors: pass `forward(model, batch) -> Tensor`.")
                if out_a.shape != out_b.shape:
                    raise ValueError(
                        f"the outputs differ in shape: {tuple(out_a.shape)} vs {tuple(out_b.shape)}."
                    )
                if chosen == "auto":
                    chosen = "disagreement" if out_a.dim() > 1 and out_a.shape[-1] > 1 else "rms"
                if chosen == "disagreement":
                    differ = out_a.argmax(-1) != out_b.argmax(-1)
                    total, count = total + float(differ.sum()), count + differ.numel()
                else:
                    diff = out_a.to(torch.float64) - out_b.to(torch.float64).to(out_a.device)
                    total, count = total + float(diff.pow(2).sum()), count + diff.numel()
    finally:
        for m, training in modes:
            m.train(training)
    value = total / max(count, 1) if chosen == "disagreement" else (total / max(count, 1)) ** 0.5
    return FunctionalDistance(value, chosen, count)
