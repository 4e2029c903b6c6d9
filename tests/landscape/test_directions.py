"""Directions: filter normalization exactly, Hessian directions against the dense eigenvectors."""

from __future__ import annotations

import math
import re

import pytest
import torch

from lightning_landscape.landscape import hessian_directions, loss_line, random_directions
from lightning_landscape.landscape.directions import difference, flatten, given_or_random, named_trainable
from tests.curvature.cases import Case, dense_hessian
from tests.landscape.cases import DT, MLP, ce, conv_case, linear_case


def test_filter_normalization_is_exact() -> None:
    case = conv_case()
    weights = named_trainable(case.model)
    (d,) = random_directions(case.model, 1, normalization="filter", seed=7)
    for name in ("conv.weight", "fc.weight"):
        w = weights[name].detach()
        want = w.reshape(w.shape[0], -1).norm(dim=1)
        got = d[name].reshape(w.shape[0], -1).norm(dim=1)
        torch.testing.assert_close(got, want, atol=0, rtol=1e-13)
    for name in ("conv.bias", "bn.weight", "bn.bias", "fc.bias"):
        assert torch.count_nonzero(d[name]) == 0
    (layer,) = random_directions(case.model, 1, normalization="layer", seed=7, ignore=None)
    for name, w in weights.items():
        assert float(layer[name].norm()) == pytest.approx(float(w.detach().norm()), rel=1e-13)
    (whole,) = random_directions(case.model, 1, normalization="model", seed=7)
    kept = ("conv.weight", "fc.weight")
    assert math.sqrt(sum(float(whole[n].norm()) ** 2 for n in kept)) == pytest.approx(
        math.sqrt(sum(float(weights[n].norm()) ** 2 for n in kept)), rel=1e-13
    )
    # Same seed, same directions; another seed, other directions.
    again = random_directions(case.model, 1, seed=7)[0]
    other = random_directions(case.model, 1, seed=8)[0]
    assert torch.equal(again["fc.weight"], d["fc.weight"])
    assert not torch.equal(other["fc.weight"], d["fc.weight"])


def test_filters_of_a_hugging_face_conv1d_are_its_columns() -> None:
    # GPT-2's linear layers are transformers' Conv1D: y = x W + b with W of shape (in, out), so an output
    # unit's filter is a column (a row of nn.Linear's (out, in) weight).
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = torch.nn.Sequential(Conv1D(3, 2), torch.nn.Tanh(), torch.nn.Linear(3, 1)).double()
    with torch.no_grad():
        model[0].weight.mul_(torch.tensor([1.0, 10.0, 100.0], dtype=DT))  # filters of very different norms
    (d,) = random_directions(model, 1, seed=0)
    w = model[0].weight.detach()
    assert w.shape == (2, 3)
    torch.testing.assert_close(d["0.weight"].norm(dim=0), w.norm(dim=0), atol=0, rtol=1e-13)
    assert torch.count_nonzero(d["0.bias"]) == 0
    torch.testing.assert_close(
        d["2.weight"].norm(dim=1), model[2].weight.detach().norm(dim=1), atol=0, rtol=1e-13
    )


def test_hessian_directions_are_the_dense_eigenvectors() -> None:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x = torch.randn(12, 4, generator=gen, dtype=DT)
    case = Case("mlp", MLP().to(DT), ce, [(x, torch.randint(0, 3, (12,), generator=gen))])
    dirs, values, converged = hessian_directions(case.model, case.loss_fn, case.batches, k=2, tol=1e-8)
    H = dense_hessian(case)
    evals = torch.linalg.eigvalsh(H)
    assert converged
    torch.testing.assert_close(values, evals.flip(0)[:2], rtol=1e-6, atol=1e-9)
    for d, lam in zip(dirs, values.tolist(), strict=True):
        v = flatten(d)
        assert float(v.norm()) == pytest.approx(1.0, abs=1e-10)
        torch.testing.assert_close(H @ v, lam * v, atol=1e-6 * abs(lam) + 1e-9, rtol=0)
    line = loss_line(case.model, case.loss_fn, case.batches, direction=dirs[0], span=(-0.1, 0.1), steps=5)
    assert line.curvature == pytest.approx(values[0].item(), rel=1e-6)


def test_difference_is_b_minus_a_over_weights_and_floating_buffers() -> None:
    a, b = conv_case(0), conv_case(1)
    delta, buffer_delta = difference(a.model, b.model)
    assert set(delta) == set(named_trainable(a.model))
    for n, p in a.model.named_parameters():
        assert torch.equal(delta[n], (dict(b.model.named_parameters())[n] - p).detach())
    assert set(buffer_delta) == {"bn.running_mean", "bn.running_var"}  # num_batches_tracked is an integer
    torch.testing.assert_close(
        buffer_delta["bn.running_var"], b.model.bn.running_var - a.model.bn.running_var
    )


def test_bad_arguments_are_named() -> None:
    m = linear_case().model
    with pytest.raises(ValueError, match="`normalization`"):
        random_directions(m, normalization="unit")  # type: ignore[arg-type]


def test_given_or_random_says_which_in_the_meta() -> None:
    """A line's or plane's directions: the given ones untouched, else those ``random_directions`` draws under
    the seed (filter-normalized), the meta saying which; a plane's given directions must be a pair."""
    model = conv_case().model
    (drawn,) = random_directions(model, 1, seed=4)
    line, meta = given_or_random(model, None, 1, seed=4)
    assert meta == {"direction": "random", "normalization": "filter", "seed": 4}
    assert line.keys() == drawn.keys() and all(torch.equal(line[n], drawn[n]) for n in drawn)
    pair, meta = given_or_random(model, None, 2, seed=4)
    assert meta == {"directions": "random", "normalization": "filter", "seed": 4}
    for got, want in zip(pair, random_directions(model, 2, seed=4), strict=True):
        assert all(torch.equal(got[n], want[n]) for n in want)
    given, meta = given_or_random(model, pair, 2, seed=0)
    assert given is pair and meta == {"directions": "given"}
    given, meta = given_or_random(model, drawn, 1, seed=0)
    assert given is drawn and meta == {"direction": "given"}
    for bad in (drawn, [drawn], [drawn, drawn, drawn]):
        with pytest.raises(ValueError, match=re.escape("`directions` must be a pair (d1, d2)")):
            given_or_random(model, bad, 2, seed=0)
