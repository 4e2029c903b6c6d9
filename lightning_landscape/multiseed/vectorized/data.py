"""Per-seed data: one batch stream per member, stacked as ``[K, B, ...]``, and the size of a batch.

With ``per_seed_data`` each tensor of a batch carries a leading member dimension; otherwise all members
see one shared batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_landscape._torch import tree_map
from lightning_landscape.curvature._inputs import batch_size


class PerSeedLoader:
    """Zips one data loader per member into batches of shape ``[K, B, ...]`` for ``per_seed_data=True``.

    Member ``k`` sees exactly the batch stream of ``loaders[k]``; build each loader from its seed (e.g. a
    ``DataLoader(..., shuffle=True, generator=torch.Generator().manual_seed(seed))``) and the single run with
    that seed uses the same loader (iterated as ``for batch in loader``). Iteration stops with the shortest
    loader. It has no ``len`` on purpose: Lightning then iterates it to exhaustion, as a plain loop does,
    rather than stopping after ``len`` batches and skipping the sampler's final generator draw.

    Args:
        loaders: one iterable of batches per member, in member order.

    Raises:
        ValueError: ``loaders`` is empty.

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> ds = TensorDataset(torch.rand(64, 1), torch.rand(64, 1))
        >>> gens = [torch.Generator().manual_seed(s) for s in (0, 1, 2)]
        >>> loaders = [DataLoader(ds, 32, shuffle=True, generator=g) for g in gens]
        >>> x, y = next(iter(PerSeedLoader(loaders)))  # member k's batch is x[k], y[k]
        >>> tuple(x.shape)
        (3, 32, 1)

        Train with ``SeedEnsemble(..., seeds=[0, 1, 2], per_seed_data=True)`` and
        ``trainer.fit(ensemble, train_dataloaders=PerSeedLoader(loaders))``.
    """

    def __init__(self, loaders: Sequence[Iterable[Any]]) -> None:
        if len(loaders) == 0:
            raise ValueError("`loaders` is empty; pass one data loader per ensemble member.")
        self.loaders = list(loaders)

    def __iter__(self) -> Iterator[Any]:
        iterators = [iter(loader) for loader in self.loaders]
        while True:
            batches = []
            for it in iterators:
                try:
                    batches.append(next(it))
                except StopIteration:
                    # Run every loader to its own end, as `for batch in loader` does: a shuffling
                    # sampler draws from its generator once more on exhaustion, and the next epoch's
                    # order depends on that draw.
                    for other in iterators:
                        for _ in other:
                            pass
                    return
            yield tree_map(lambda *xs: torch.stack(xs), *batches)


def member_batch_size(batch: Any, per_seed_data: bool) -> int:
    """How many samples one member sees in ``batch``: its ``B`` (1 for a batch without tensors).

    The size of a shared batch is :func:`~lightning_landscape.curvature._inputs.batch_size`; a per-seed
    batch ``[K, B, ...]`` is measured on member 0's slice.

    Example:
        >>> member_batch_size((torch.zeros(3, 8, 1), torch.zeros(3, 8)), per_seed_data=True)
        8
        >>> member_batch_size((torch.zeros(8, 1), torch.zeros(8)), per_seed_data=False)
        8
    """
    if per_seed_data:
        batch = tree_map(lambda t: t[0] if isinstance(t, Tensor) and t.dim() > 0 else t, batch)
    try:
        return batch_size(batch)
    except TypeError:  # a batch without tensors counts as one sample
        return 1
