"""Which batches a probe sees: a named loader of the Trainer, drawn once under a fixed seed, RNGs restored.

The one way the package draws probe batches (monitors, seed barriers, ``lightning-landscape landscape``,
instability): :func:`draw_batches`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.pytorch.utilities.data import extract_batch_size
from torch.utils.data import DataLoader

from lightning_landscape._rng import kept_rng
from lightning_landscape._torch import fresh_iterator, shutdown_workers
from lightning_landscape.callbacks._lightning import load_val_dataloaders

if TYPE_CHECKING:
    import lightning.pytorch as pl


def _generators(dataloader: DataLoader) -> list[torch.Generator]:
    found: list[torch.Generator] = []
    owners = [
        dataloader,
        getattr(dataloader, "sampler", None),
        getattr(getattr(dataloader, "batch_sampler", None), "sampler", None),
    ]
    for owner in owners:
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def _epoch_samplers(dataloader: DataLoader) -> list[Any]:
    owners = [
        getattr(dataloader, "sampler", None),
        getattr(getattr(dataloader, "batch_sampler", None), "sampler", None),
    ]
    found: list[Any] = []
    for owner in owners:
        if owner is not None and isinstance(getattr(owner, "epoch", None), int) and owner not in found:
            found.append(owner)
    return found


@contextmanager
def fixed_data_rng(dataloader: DataLoader, seed: int) -> Iterator[None]:
    """Iterate ``dataloader`` under ``seed`` and put every random state it touches back afterwards.

    Seeding (rather than only saving and restoring) makes the probe batches the same whenever they are drawn,
    so a resumed run probes the very batches of the original run. The global generators are snapshot and
    restored by :func:`~lightning_landscape._rng.kept_rng` (the one RNG snapshot of the package); CUDA
    generators are left alone: samplers and worker seeds draw from the CPU generator.
    """
    generators = _generators(dataloader)
    generator_states = [g.get_state() for g in generators]
    samplers = _epoch_samplers(dataloader)
    epochs = [s.epoch for s in samplers]
    try:
        with kept_rng(cuda=False):
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            for g in generators:
                g.manual_seed(seed)
            for s in samplers:
                s.epoch = 0
            yield
    finally:
        for g, state in zip(generators, generator_states, strict=True):
            g.set_state(state)
        for s, epoch in zip(samplers, epochs, strict=True):
            s.epoch = epoch


def iterate_fresh(dataloader: DataLoader) -> Iterator[Any]:
    """A new iterator over ``dataloader`` that shares nothing with the training loop's iterator.

    ``iter(dataloader)`` would hand out (and later reset) the cached iterator of a loader with
    ``persistent_workers=True``; the private ``_get_iterator`` always builds a fresh one.
    """
    it = fresh_iterator(dataloader)
    try:
        yield from it
    finally:
        shutdown_workers(it)


def check_dataloader(value: Any, argument: str = "dataloader") -> str:
    """Check a probe's ``dataloader``: ``"train"``, ``"val"``, ``"train:<name>"`` or ``"val:<name>"``.

    ``<name>`` is a key of the dict (or ``CombinedLoader``) of dataloaders the Trainer iterates, or the index
    of one in a list of them; whether it exists is checked when the probe first draws its batches
    (:func:`probe_dataloader`), once the Trainer has loaded its dataloaders.

    Args:
        value: the argument's value.
        argument: its name, for the error message.

    Returns:
        ``value``.

    Raises:
        TypeError: If ``value`` is not a str.
        ValueError: If it has none of the four forms.

    Example:
        >>> check_dataloader("train:mnist")
        'train:mnist'
        >>> check_dataloader("test")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `dataloader` must be 'train', 'val', 'train:<name>' or 'val:<name>' ... got 'test'
    """
    if not isinstance(value, str):
        raise TypeError(
            f"`{argument}` must be a str such as 'train' or 'train:<name>', got {type(value).__name__}"
        )
    which, sep, name = value.partition(":")
    if which not in ("train", "val") or (sep and not name):
        raise ValueError(
            f"`{argument}` must be 'train', 'val', 'train:<name>' or 'val:<name>' (<name> a key of a dict or "
            f"CombinedLoader of dataloaders, or a list index), got {value!r}"
        )
    return value


def _named_loaders(loaders: Any) -> dict[str, Any] | None:
    """``{name: loader}`` of several dataloaders (a dict by key, a list by index); ``None`` for one."""
    from lightning.pytorch.utilities import CombinedLoader

    if isinstance(loaders, CombinedLoader):
        loaders = loaders.iterables
    if isinstance(loaders, Mapping):
        return {str(k): v for k, v in loaders.items()}
    if isinstance(loaders, (list, tuple)):
        return {str(i): v for i, v in enumerate(loaders)}
    return None


def probe_dataloader(trainer: pl.Trainer, which: str, argument: str = "dataloader") -> DataLoader:
    """The (distributed-sampler-wrapped) dataloader the Trainer itself iterates that ``which`` names.

    ``"train"`` is the training dataloader (the only one of a dict, list or ``CombinedLoader`` holding one;
    refused with several), ``"val"`` the first validation dataloader, ``"train:<name>"`` / ``"val:<name>"``
    the one under key ``<name>`` of a dict or ``CombinedLoader`` (or index ``<name>`` of a list).

    Args:
        trainer: the Trainer, after it loaded its dataloaders (``on_train_start`` or later).
        which: as :func:`check_dataloader` accepts.
        argument: the callback's argument name, for the error messages.

    Returns:
        The ``DataLoader``.

    Raises:
        ValueError: If there is no such dataloader (naming the ones there are), ``"train"`` is ambiguous, or
            the one named is not a ``DataLoader``.
    """
    kind, _, name = check_dataloader(which, argument).partition(":")
    if kind == "val" and trainer.val_dataloaders is None:
        # The val loop loads its dataloaders lazily; this is the same call the sanity check makes.
        load_val_dataloaders(trainer)
    loaders: Any = trainer.train_dataloader if kind == "train" else trainer.val_dataloaders
    named = _named_loaders(loaders)
    choices = " or ".join(f"'{kind}:{n}'" for n in named or {})
    if named is None and name:
        raise ValueError(
            f"`{argument}`={which!r} names one of several {kind} dataloaders, but the Trainer has a single "
            f"{kind} {type(loaders).__name__}; pass `{argument}`='{kind}'"
        )
    if named is not None and name:
        if name not in named:
            raise ValueError(
                f"`{argument}`={which!r}: the Trainer's {kind} dataloaders are named {list(named)}; "
                f"pass `{argument}`={choices}"
            )
        loaders = named[name]
    elif named is not None and (len(named) == 1 or (kind == "val" and named)):
        loaders = next(iter(named.values()))
    elif named is not None and len(named) > 1:
        raise ValueError(
            f"the probe needs one {kind} DataLoader, and the Trainer has {len(named)} ({list(named)}); "
            f"name the one to probe: `{argument}`={choices}"
        )
    if not isinstance(loaders, DataLoader):
        raise ValueError(
            f"the probe needs a single {kind} DataLoader, found {type(loaders).__name__}; pass "
            f"`{argument}`='{'val' if kind == 'train' else 'train'}' or give the Trainer a DataLoader there"
        )
    return loaders


def draw_batches(
    dataloader: Iterable[Any],
    num_batches: int | None,
    seed: int,
    to_device: Callable[[Any], Any] | None = None,
) -> list[Any]:
    """The first ``num_batches`` batches (all if ``None``) of a fresh pass over ``dataloader`` under ``seed``:
    the one way the package draws probe batches (monitors, seed barriers, ``lightning-landscape landscape``).

    The global generators, the loader's own generators and its samplers' epochs are seeded for the draw and
    put back afterwards (:func:`fixed_data_rng`), so the same batches come back whenever they are drawn.

    Args:
        dataloader: a ``DataLoader`` (or any iterable of batches).
        num_batches: how many batches; ``None`` for a whole pass.
        seed: seeds the draw.
        to_device: moves each batch (a monitor passes ``trainer.strategy.batch_to_device``).

    Raises:
        ValueError: If the dataloader yields no batch.
    """
    batches: list[Any] = []
    with fixed_data_rng(dataloader, seed):  # type: ignore[arg-type]
        it = iterate_fresh(dataloader)  # type: ignore[arg-type]
        try:
            for batch in it:
                batches.append(to_device(batch) if to_device is not None else batch)
                if num_batches is not None and len(batches) >= num_batches:
                    break
        finally:
            it.close()  # type: ignore[attr-defined]
    if not batches:
        raise ValueError("the probe dataloader yielded no batch")
    return batches


def batch_size_of(batch: Any, strict: bool = False) -> int:
    """Number of samples in ``batch`` as Lightning counts them (``extract_batch_size``), 1 if it cannot tell
    (``strict``: Lightning's error instead, for callers whose arithmetic needs the true count, such as the
    gradient noise scale's micro-batch sizes).

    The weight :class:`~lightning_landscape.callbacks.risk_gap.RiskGapMonitor` gives a step's loss, so that
    its epoch means are the ones Lightning computes for ``self.log(..., on_epoch=True)`` (any nesting,
    dataclasses; never an error). The curvature operator weighs its fixed batches by
    :func:`~lightning_landscape.curvature.batch_size` instead (leading dimension of the first tensor, an
    error for a batch without one): the two callers need those two semantics, and there is no third.
    """
    if strict:
        return int(extract_batch_size(batch))
    try:
        return int(extract_batch_size(batch))
    except Exception:
        return 1
