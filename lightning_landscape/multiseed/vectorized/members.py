"""The members: each built as its single run would build it, stacked into one module, taken apart again.

A member's start is defined by its single run: ``seed_everything(seed, workers=True)``, then the model is
built. :func:`build_seeded` does exactly that for each seed and leaves the caller's global RNG alone;
:func:`stack_members` turns the K built networks into one module whose every tensor has a leading member
dimension of size K (what :func:`torch.func.vmap` maps over), and :func:`unstack_member` gives member
``k`` back as a plain, independent module.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from lightning.fabric.utilities.seed import seed_everything
from torch import Tensor, nn
from torch.func import stack_module_state

from lightning_landscape._rng import kept_rng
from lightning_landscape._torch import set_buffer, set_parameter

# What seed_everything writes besides the generators: Lightning's record of the seed for workers.
_SEED_ENV = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")


@contextmanager
def _kept_global_seed() -> Iterator[None]:
    """Every global RNG and Lightning's seed variables as they were, after the block."""
    env = {key: os.environ.get(key) for key in _SEED_ENV}
    try:
        with kept_rng():
            yield
    finally:
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def build_seeded(factory: Callable[[], Any], seeds: Sequence[int]) -> list[Any]:
    """``[factory() after seed_everything(s, workers=True) for s in seeds]``, global RNG left untouched.

    This is the definition of "member ``s`` starts as a single run with seed ``s``": the single run calls
    ``seed_everything(s, workers=True)`` and then builds its model. Building K members calls
    ``seed_everything`` K times, which must not leak into the caller's own seeding.

    Args:
        factory: builds one model (called once per seed).
        seeds: the seeds, in member order.

    Returns:
        One built object per seed.

    Example:
        >>> import torch
        >>> a, b = build_seeded(lambda: torch.rand(1), [3, 3])
        >>> bool(a == b)
        True
    """
    built = []
    with _kept_global_seed():
        for seed in seeds:
            seed_everything(seed, workers=True, verbose=False)
            built.append(factory())
    return built


def assign(module: nn.Module, name: str, tensor: Tensor, is_param: bool) -> None:
    """Put ``tensor`` into ``module`` under the dotted ``name``, as a parameter or as a buffer."""
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if is_param:
        set_parameter(owner, leaf, nn.Parameter(tensor, requires_grad=tensor.requires_grad))
    else:
        set_buffer(owner, leaf, tensor)


def stack_members(nets: Sequence[nn.Module]) -> tuple[nn.Module, nn.Module, list[str], list[str]]:
    """``(skeleton, members, parameter names, buffer names)`` of K networks of one architecture.

    Returns:
        ``skeleton``: a copy of ``nets[0]`` on the meta device (structure only, for
        :func:`torch.func.functional_call`); ``members``: the same module tree, every parameter and buffer
        a fresh tensor with a leading member dimension of size K (parameters require grad); then the names
        of the stacked parameters and buffers.

    Example:
        >>> skeleton, members, params, buffers = stack_members([nn.Linear(3, 2), nn.Linear(3, 2)])
        >>> tuple(members.weight.shape), skeleton.weight.device.type, params, buffers
        ((2, 2, 3), 'meta', ['weight', 'bias'], [])
    """
    params, buffers = stack_module_state(list(nets))
    skeleton = copy.deepcopy(nets[0]).to("meta")
    members = copy.deepcopy(skeleton)
    for name, tensor in params.items():
        assign(members, name, tensor.detach().clone().requires_grad_(True), is_param=True)
    for name, tensor in buffers.items():
        assign(members, name, tensor.detach().clone(), is_param=False)
    return skeleton, members, list(params), list(buffers)


def unstack_member(
    skeleton: nn.Module, state: Mapping[str, Tensor], param_names: Sequence[str], buffer_names: Sequence[str]
) -> nn.Module:
    """A plain, independent module shaped as ``skeleton`` holding one member's ``state`` (no member dim).

    Example:
        >>> import torch
        >>> skeleton, members, params, buffers = stack_members([nn.Linear(3, 2), nn.Linear(3, 2)])
        >>> state = {name: t[1].detach().clone() for name, t in members.named_parameters()}
        >>> net = unstack_member(skeleton, state, params, buffers)
        >>> torch.equal(net.weight, members.weight[1]), net.weight.requires_grad
        (True, True)
    """
    net = copy.deepcopy(skeleton)
    for name in param_names:
        assign(net, name, state[name].requires_grad_(True), is_param=True)
    for name in buffer_names:
        assign(net, name, state[name], is_param=False)
    return net
