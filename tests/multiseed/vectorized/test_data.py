"""Per-seed data: PerSeedLoader streams against K plain runs on their own streams; the size of a batch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape.curvature._inputs import batch_size
from lightning_landscape.multiseed.vectorized import PerSeedLoader, SeedEnsemble
from lightning_landscape.multiseed.vectorized.data import member_batch_size
from tests._shared import QUIET
from tests.multiseed.vectorized._cases import MLP, SEEDS, assert_same, data


def test_per_seed_data_streams_match_separate_runs() -> None:
    dataset = data()

    def loader(seed: int) -> DataLoader:
        return DataLoader(dataset, batch_size=12, shuffle=True, generator=torch.Generator().manual_seed(seed))

    ensemble = SeedEnsemble(
        MLP, {"width": 5}, seeds=SEEDS, optimizer="adam", lr=0.05, per_seed_data=True, compile=False
    )
    trainer = Trainer(max_epochs=2, precision="64-true", logger=False, enable_checkpointing=False, **QUIET)
    trainer.fit(ensemble, PerSeedLoader([loader(s) for s in SEEDS]))
    # Independent runs, each on its own seed's shuffled stream.
    for k, seed in enumerate(SEEDS):
        seed_everything(seed, workers=True, verbose=False)
        net = MLP(width=5).double()
        opt = torch.optim.Adam(net.parameters(), lr=0.05)
        own = loader(seed)
        for _ in range(2):
            for x, y in own:
                loss = F.mse_loss(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        assert_same(ensemble.member_module(k), net, atol=1e-12)
    # Members differ in their data: seed 0's net trained on seed 5's stream would not match.
    assert not torch.allclose(ensemble.members.body[0].weight[0], ensemble.members.body[0].weight[1])


def test_per_seed_loader_stacks_member_batches_and_runs_every_loader_to_its_end() -> None:
    short = [(torch.full((2, 1), float(i)), torch.zeros(2)) for i in range(2)]
    consumed: list[int] = []

    def long() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(3):
            consumed.append(i)
            yield (torch.full((2, 1), 10.0 + i), torch.ones(2))

    batches = list(PerSeedLoader([short, long()]))
    assert len(batches) == 2  # the shortest loader ends the epoch
    x, y = batches[1]
    assert torch.equal(y, torch.stack([torch.zeros(2), torch.ones(2)]))
    assert (
        x.shape == (2, 2, 1)
        and torch.equal(x[0], short[1][0])
        and torch.equal(x[1], torch.full((2, 1), 11.0))
    )
    assert consumed == [0, 1, 2]  # ... but the longer one was still run to its end
    with pytest.raises(ValueError, match="`loaders` is empty"):
        PerSeedLoader([])


def test_member_batch_size_is_the_batch_size_of_one_member() -> None:
    shared = {"x": torch.zeros(7, 3), "y": torch.zeros(7)}
    assert member_batch_size(shared, per_seed_data=False) == batch_size(shared) == 7
    stacked = (torch.zeros(4, 5, 3), torch.zeros(4, 5))  # K=4 members, B=5
    assert member_batch_size(stacked, per_seed_data=True) == 5
    assert member_batch_size(stacked, per_seed_data=False) == 4
    assert member_batch_size((torch.zeros(4), torch.zeros(4)), per_seed_data=True) == 1  # one scalar each
    assert member_batch_size(["no", "tensors"], per_seed_data=False) == 1
    # Through the loader: what SeedEnsemble sees from K loaders of batch size 6.
    ds = TensorDataset(torch.rand(12, 1), torch.rand(12, 1))
    batch = next(iter(PerSeedLoader([DataLoader(ds, 6)] * 3)))
    assert member_batch_size(batch, per_seed_data=True) == 6
