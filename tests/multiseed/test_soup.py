"""Soups and ensembles of all K seeds on real tiny runs: identical seeds, greedy by construction, m = 1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_landscape.multiseed.checkpoints import load_weights
from lightning_landscape.multiseed.paths import SUMMARY_JSON
from lightning_landscape.multiseed.soup import SOUP_CKPT, average_states, prediction_scores
from tests.multiseed import _tiny


class SameInit(_tiny.TinyRegressor):
    """Every seed starts from the same weights (and trains on unshuffled data): K identical runs."""

    def __init__(self) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            super().__init__()


def _unshuffled() -> dict[str, DataLoader]:
    train, val = _tiny.loaders()
    return {"train_dataloaders": DataLoader(train.dataset, batch_size=16), "val_dataloaders": val}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny runs on a shared machine; restored below
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit(root: Path, model: type, loaders: dict[str, DataLoader], **kwargs: object) -> object:
    from lightning_landscape.multiseed import MultiSeedTrainer

    trainer = MultiSeedTrainer(seeds=3, root_dir=root, max_epochs=2, test="none", **_tiny.QUIET, **kwargs)
    return trainer.fit(model, **loaders)


def test_uniform_soup_of_identical_seeds_is_the_seed(tmp_path: Path) -> None:
    result = _fit(tmp_path, SameInit, _unshuffled(), soup="uniform", ensemble=1)
    best = load_weights(result.best_model_path, SameInit())  # type: ignore[attr-defined]
    state = torch.load(tmp_path / SOUP_CKPT, weights_only=True)  # a plain state dict
    soup = SameInit()
    soup.load_state_dict(state)
    for name, value in best.state_dict().items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=1e-6)
    rows = {r["name"]: r for r in result.combined}  # type: ignore[attr-defined]
    assert rows["uniform soup"]["seeds"] == [0, 1, 2] or sorted(rows["uniform soup"]["seeds"]) == [0, 1, 2]
    assert rows["uniform soup"]["val"] == pytest.approx(rows["best seed"]["val"], rel=1e-5)
    # The ensemble of the best seed alone is the best seed.
    assert rows["ensemble of top 1"]["val_prediction"] == rows["best seed"]["val_prediction"]


def test_greedy_soup_is_never_worse_on_validation_and_rows_reach_summary_and_table(tmp_path: Path) -> None:
    train, val = _tiny.loaders()
    result = _fit(tmp_path, _tiny.TinyRegressor, {"train_dataloaders": train, "val_dataloaders": val},
                  soup="greedy", ensemble=3)  # fmt: skip
    rows = {r["name"]: r for r in result.combined}  # type: ignore[attr-defined]
    best, soup, ens = rows["best seed"], rows["greedy soup"], rows["ensemble of top 3"]
    assert soup["val"] <= best["val"] + 1e-7 and soup["seeds"][0] == result.best_seed  # type: ignore[attr-defined]
    # The best seed's module metric is its recorded score (the same validation loop).
    assert best["val"] == pytest.approx(result.best_score, rel=1e-5)  # type: ignore[attr-defined]
    # The prediction scores, recomputed by hand: the mean squared error of the averaged outputs.
    runs = {r.seed: r for r in result.runs}  # type: ignore[attr-defined]
    models = [load_weights(runs[s].best_model_path, _tiny.TinyRegressor()) for s in ens["seeds"]]
    with torch.no_grad():
        errs = [torch.stack([m.net(x) for m in models]).mean(0) - y for x, y in val]
    want = float(torch.cat(errs).pow(2).mean())
    assert ens["val_prediction"]["mse"] == pytest.approx(want, rel=1e-6)
    assert ens["forward_passes"] == 3 and soup["forward_passes"] == 1
    block = json.loads((tmp_path / SUMMARY_JSON).read_text())["combined"]
    assert [r["name"] for r in block["rows"]] == ["best seed", "greedy soup", "ensemble of top 3"]
    from lightning_landscape.cli.help import format_result

    table = format_result(result)  # type: ignore[arg-type]
    assert "greedy soup" in table and "ensemble of top 3" in table


def test_prediction_scores_of_a_classifier_average_probabilities() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(3, 4), nn.Linear(3, 4)
    x, y = torch.randn(10, 3), torch.randint(0, 4, (10,))
    scores = prediction_scores([a, b], [(x, y)])
    with torch.no_grad():
        prob = (a(x).softmax(-1) + b(x).softmax(-1)) / 2
    assert scores["nll"] == pytest.approx(float(-prob[torch.arange(10), y].log().mean()), rel=1e-6)
    assert scores["accuracy"] == pytest.approx(float((prob.argmax(-1) == y).float().mean()))
    with pytest.raises(ValueError, match="`states`"):
        average_states([])


@pytest.mark.parametrize("method", ["weights", "activations"])
def test_a_soup_of_a_seed_and_its_permuted_copy_is_the_seed(method: str) -> None:
    # Without alignment the average of two permuted copies is another network; aligned, it is the seed.
    from lightning_landscape.multiseed.soup import Members, _soup_model, aligned_members

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    twin = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    perm = torch.randperm(6)
    with torch.no_grad():
        twin[0].weight.copy_(net[0].weight[perm])
        twin[0].bias.copy_(net[0].bias[perm])
        twin[2].weight.copy_(net[2].weight[:, perm])
        twin[2].bias.copy_(net[2].bias)
    members = Members.__new__(Members)
    members.models, members.template = [net, twin], net
    x = torch.randn(32, 3, dtype=torch.float64)
    aligned, error = aligned_members(members, method, [(x, None)])
    assert error is None
    soup = _soup_model(net, aligned)
    for name, value in net.state_dict().items():
        torch.testing.assert_close(soup.state_dict()[name], value, rtol=0, atol=1e-12)
    raw = _soup_model(net, [net, twin])
    assert not torch.allclose(raw(x), net(x), atol=1e-3)
    unaligned, reason = aligned_members(members, None, [])
    assert unaligned == [net, twin] and reason == "align=None"
