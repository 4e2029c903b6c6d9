"""align and functional_distance against hand-made ground truth.

Every case builds the permuted (and, behind ReLU, rescaled) copy of a random float64 network with its own
explicit code, not with the package's spec: alignment must give the reference back to 1e-6, the segment from
the reference to the aligned copy must be flat (barrier 0 to 1e-6), and the aligned copy must compute
``other``'s function to 1e-10, for both methods.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_landscape.landscape import AlignResult, FunctionalDistance, align, functional_distance

DT = torch.float64


@pytest.fixture(autouse=True)
def _one_thread_seeded() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems on a shared machine; restored below
    try:
        with torch.random.fork_rng():  # the networks' initializations do not depend on the test order
            torch.manual_seed(0)
            yield
    finally:
        torch.set_num_threads(threads)


class ResMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 12)
        self.fc1, self.fc2 = nn.Linear(12, 16), nn.Linear(16, 12)
        self.fc3, self.fc4 = nn.Linear(12, 10), nn.Linear(10, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inp(x)
        x = x + self.fc2(torch.relu(self.fc1(x)))
        x = x + self.fc4(torch.relu(self.fc3(x)))
        return self.head(torch.relu(x))


class Block(nn.Module):
    """Input projection, pre-norm attention and MLP with residuals, norm, head."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 16)
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(16), nn.LayerNorm(16), nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inp(x)
        y = self.ln1(x)
        a, _ = self.attn(y, y, y)
        x = x + a
        x = x + self.mlp(self.ln2(x))
        return self.head(self.ln3(x))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 5),
    )  # fmt: skip


def _moved(t: Tensor, axis: int, perm: Tensor, block: int = 1, offset: int = 0) -> Tensor:
    """Unit ``i`` of ``t`` along ``axis`` (blocks of ``block`` after ``offset``) becomes unit ``perm[i]``."""
    idx = torch.arange(t.shape[axis])
    span = (offset + perm[:, None] * block + torch.arange(block)).reshape(-1)
    idx[offset : offset + len(span)] = span
    return t.index_select(axis, idx)


Moves = dict[str, list[tuple[str, int, int, int, str]]]  # group -> [(tensor, axis, block, offset, role)]


def _apply(model: nn.Module, groups: dict[str, int], moves: Moves, rescaled: set[str], gen: torch.Generator):
    twin = copy.deepcopy(model)
    state = {k: v.clone() for k, v in twin.state_dict().items()}
    for g, n in groups.items():
        perm = torch.randperm(n, generator=gen)
        c = torch.exp(2 * torch.rand(n, generator=gen, dtype=DT) - 1) if g in rescaled else None
        for name, axis, block, offset, role in moves[g]:
            t = state[name]
            if c is not None and role != "other":
                shape = [1] * t.dim()
                shape[axis] = -1
                t = t * c.reshape(shape) if role == "out" else t / c.reshape(shape)
            state[name] = _moved(t, axis, perm, block, offset)
    twin.load_state_dict(state)
    return twin


def _lin(name: str, rows: str | None, cols: str | None, moves: Moves, block: int = 1) -> None:
    if rows:
        moves[rows] += [(f"{name}.weight", 0, 1, 0, "out"), (f"{name}.bias", 0, 1, 0, "out")]
    if cols:
        moves[cols] += [(f"{name}.weight", 1, block, 0, "in")]


def mlp_case(gen: torch.Generator) -> tuple[nn.Module, nn.Module, Tensor]:
    ref = mlp().to(DT)
    moves: Moves = {"a": [], "b": []}
    _lin("0", "a", None, moves), _lin("2", "b", "a", moves), _lin("4", None, "b", moves)
    return (
        ref,
        _apply(ref, {"a": 16, "b": 12}, moves, {"a", "b"}, gen),
        torch.randn(32, 10, dtype=DT, generator=gen),
    )


def cnn_case(gen: torch.Generator) -> tuple[nn.Module, nn.Module, Tensor]:
    ref = cnn().to(DT)
    for bn in (ref[1], ref[4]):
        bn.running_mean.normal_(generator=gen), bn.running_var.uniform_(0.5, 2.0, generator=gen)
        bn.weight.data.normal_(generator=gen), bn.bias.data.normal_(generator=gen)
    moves: Moves = {"a": [], "b": []}
    _lin("0", "a", None, moves), _lin("3", "b", "a", moves), _lin("7", None, "b", moves, block=16)
    for g, bn in (("a", "1"), ("b", "4")):
        moves[g] += [
            (f"{bn}.{k}", 0, 1, 0, "other") for k in ("weight", "bias", "running_mean", "running_var")
        ]
    x = torch.randn(16, 2, 6, 6, dtype=DT, generator=gen)
    return ref, _apply(ref, {"a": 6, "b": 8}, moves, set(), gen), x


def res_case(gen: torch.Generator) -> tuple[nn.Module, nn.Module, Tensor]:
    ref = ResMLP().to(DT)
    moves: Moves = {"s": [], "h1": [], "h2": []}
    _lin("inp", "s", None, moves), _lin("fc1", "h1", "s", moves), _lin("fc2", "s", "h1", moves)
    _lin("fc3", "h2", "s", moves), _lin("fc4", "s", "h2", moves), _lin("head", None, "s", moves)
    twin = _apply(ref, {"s": 12, "h1": 16, "h2": 10}, moves, {"h1", "h2"}, gen)
    return ref, twin, torch.randn(32, 6, dtype=DT, generator=gen)


def block_case(gen: torch.Generator) -> tuple[nn.Module, nn.Module, Tensor]:
    ref = Block().to(DT)
    for ln in (ref.ln1, ref.ln2, ref.ln3):
        ln.weight.data.normal_(generator=gen), ln.bias.data.normal_(generator=gen)
    ref.attn.in_proj_bias.data.normal_(generator=gen)
    moves: Moves = {"s": [], "heads": [], "h": []}
    _lin("inp", "s", None, moves), _lin("mlp.0", "h", "s", moves), _lin("mlp.2", "s", "h", moves)
    _lin("head", None, "s", moves), _lin("attn.out_proj", "s", None, moves)
    moves["s"] += [(f"ln{i}.{k}", 0, 1, 0, "other") for i in (1, 2, 3) for k in ("weight", "bias")]
    moves["s"] += [("attn.in_proj_weight", 1, 1, 0, "other")]
    for offset in (0, 16, 32):
        moves["heads"] += [
            ("attn.in_proj_weight", 0, 4, offset, "other"),
            ("attn.in_proj_bias", 0, 4, offset, "other"),
        ]
    moves["heads"] += [("attn.out_proj.weight", 1, 4, 0, "other")]
    twin = _apply(ref, {"s": 16, "heads": 4, "h": 24}, moves, set(), gen)
    return ref, twin, torch.randn(8, 7, 5, dtype=DT, generator=gen)


CASES = {"mlp": mlp_case, "cnn": cnn_case, "residual": res_case, "transformer": block_case}


def _loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    return ((model(batch[0]) - batch[1]) ** 2).mean()


def _line(a: nn.Module, b: nn.Module, batch: tuple[Tensor, Tensor], steps: int = 11) -> Tensor:
    """The loss on the straight segment from ``a`` to ``b`` (weights and floating buffers), eval mode."""
    sa, sb = a.state_dict(), b.state_dict()
    model = copy.deepcopy(a).eval()
    losses = []
    with torch.no_grad():
        for t in torch.linspace(0, 1, steps, dtype=DT):
            point = {k: (1 - t) * v + t * sb[k] if v.is_floating_point() else v for k, v in sa.items()}
            losses.append(_loss_fn(lambda x, p=point: functional_call(model, p, (x,)), batch))  # type: ignore[arg-type]
    return torch.stack(losses)


def _barrier(losses: Tensor) -> float:
    t = torch.linspace(0, 1, len(losses), dtype=losses.dtype)
    return float((losses - ((1 - t) * losses[0] + t * losses[-1])).max())


def _snapshot(model: nn.Module) -> tuple[dict[str, Tensor], list[bool], list[bool], list[Tensor | None]]:
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    )


def _same(before, after) -> bool:  # type: ignore[no-untyped-def]
    states = all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    grads = all(
        (g is None and h is None) or torch.equal(g, h) for g, h in zip(before[3], after[3], strict=True)
    )
    return states and before[1] == after[1] and before[2] == after[2] and grads


@pytest.mark.parametrize("method", ["weights", "activations"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_permuted_copy_aligns_back_exactly(case: str, method: str) -> None:
    gen = torch.Generator().manual_seed(7)
    ref, other, x = CASES[case](gen)
    ref.eval(), other.eval()
    with torch.no_grad():
        batch = (x, ref(x) + torch.randn(ref(x).shape, dtype=DT, generator=gen))
    other.train()  # modes are kept as found
    first = next(other.parameters())
    first.requires_grad_(False)
    for p in other.parameters():
        p.grad = torch.ones_like(p) if p.requires_grad else None
    before_ref, before_other, rng = _snapshot(ref), _snapshot(other), torch.get_rng_state()

    result = align(ref, other, method, [batch, batch], _loss_fn)

    assert isinstance(result, AlignResult) and result.method == method
    assert _same(before_ref, _snapshot(ref)) and _same(before_other, _snapshot(other))
    assert torch.equal(rng, torch.get_rng_state())
    assert result.model is not other and result.model.training
    assert [p.requires_grad for p in result.model.parameters()] == [
        p.requires_grad for p in other.parameters()
    ]
    assert all(p.grad is None for p in result.model.parameters())
    aligned = result.model.state_dict()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(aligned[k], v, atol=1e-6, rtol=0, msg=f"{case}/{method}: {k}")
    result.model.eval(), other.eval()
    with torch.no_grad():  # the function of `other`, unchanged
        torch.testing.assert_close(result.model(x), other(x), atol=1e-10, rtol=0)
    raw, flat = _line(ref, other, batch), _line(ref, result.model, batch)
    assert _barrier(flat) <= 1e-6 and float(flat.max() - flat.min()) <= 1e-6
    assert _barrier(raw) > 1e-3 or float(raw.max() - raw.min()) > 1e-3  # the test could fail


def test_groups_are_derived_from_the_module() -> None:
    res = align(ResMLP(), ResMLP())
    assert sorted(res.permutations) == ["fc1", "fc3", "inp"]  # one permutation for the residual stream
    assert sorted(res.scales) == ["fc1", "fc3"]  # the stream has two producers: not rescaled
    block = align(Block(), Block())
    assert {k: len(v) for k, v in block.permutations.items()} == {"inp": 16, "attn.heads": 4, "mlp.0": 24}
    assert block.scales == {}
    conv = align(cnn(), cnn())
    assert sorted(conv.permutations) == ["0", "3"] and conv.scales == {}  # BatchNorm blocks rescaling


@pytest.mark.parametrize("method", ["weights", "activations"])
def test_alignment_of_unrelated_networks_keeps_the_function(method: str) -> None:
    gen = torch.Generator().manual_seed(3)
    for case in CASES.values():
        ref, _, x = case(gen)
        other, _, _ = case(gen)  # independently initialized (other global draws); same architecture
        with torch.random.fork_rng():
            torch.manual_seed(11)
            for p in other.parameters():
                p.data.normal_()
        result = align(ref, other, method, [(x, x)], lambda m, b: m(b[0]))
        result.model.eval(), other.eval()
        with torch.no_grad():
            torch.testing.assert_close(result.model(x), other(x), atol=1e-10, rtol=0)


class Tokens(nn.Module):
    """Embedding plus a positional parameter, a shared LeakyReLU, a scaled residual, cross-attention with
    other key/value widths to an unpermuted memory, a subtraction and a functional ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.pos = nn.Parameter(torch.randn(5, 8))
        self.act = nn.LeakyReLU(0.1)
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 12), nn.Linear(12, 12), nn.Linear(12, 8)
        self.cross = nn.MultiheadAttention(8, 2, kdim=6, vdim=6, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: Tensor, memory: Tensor) -> Tensor:
        x = self.emb(tokens) + self.pos
        h = self.act(self.fc2(self.act(self.fc1(x))))
        x = x + 0.5 * self.fc3(h)
        a, _ = self.cross(x, memory, memory, need_weights=False)
        return self.head(torch.nn.functional.relu(x - a))


def signal() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(3, 6, 3), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(6, 4, 3), nn.AdaptiveAvgPool1d(1),
        nn.Flatten(), nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Dropout(0.1), nn.Linear(5, 2),
    )  # fmt: skip


class Gated(nn.Module):
    """A per-channel parameter on a permuted conv axis, global pooling, flatten of a 1x1 map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 5, 3), nn.Conv2d(5, 3, 1)
        self.gain = nn.Parameter(torch.randn(1, 5, 1, 1))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.sigmoid(self.conv1(x)) * self.gain
        return self.fc(self.pool(self.conv2(h)).flatten(1))


@pytest.mark.parametrize("method", ["weights", "activations"])
def test_more_structures_keep_the_function(method: str) -> None:
    gen = torch.Generator().manual_seed(1)
    inputs = {
        "tokens": (
            torch.randint(0, 10, (4, 5), generator=gen),
            torch.randn(4, 3, 6, dtype=DT, generator=gen),
        ),
        "signal": (torch.randn(8, 3, 16, dtype=DT, generator=gen),),
        "gated": (torch.randn(8, 2, 5, 5, dtype=DT, generator=gen),),
    }
    groups = {
        "tokens": ({"emb": 8, "fc1": 12, "fc2": 12, "cross.heads": 2}, ["fc1", "fc2"]),
        "signal": ({"0": 6, "3": 4, "6": 5}, ["0", "3"]),
        "gated": ({"conv1": 5, "conv2": 3}, ["conv2"]),
    }
    for name, build in (("tokens", Tokens), ("signal", signal), ("gated", Gated)):
        ref, other = build().to(DT).eval(), build().to(DT).eval()
        for m in (ref, other):
            for p in m.parameters():
                p.data.normal_(generator=gen)
            for b in m.buffers():
                if b.is_floating_point():
                    b.uniform_(0.5, 2.0, generator=gen)
        result = align(ref, other, method, [inputs[name]], lambda m, b: m(*b))
        sizes, rescaled = groups[name]
        assert {g: len(p) for g, p in result.permutations.items()} == sizes
        assert sorted(result.scales) == rescaled
        assert any(not torch.equal(p, torch.arange(len(p))) for p in result.permutations.values())
        with torch.no_grad():
            torch.testing.assert_close(result.model(*inputs[name]), other(*inputs[name]), atol=1e-10, rtol=0)
        itself = align(ref, ref, method, [inputs[name]], lambda m, b: m(*b))
        assert all(torch.equal(p, torch.arange(len(p))) for p in itself.permutations.values())
        assert all(torch.allclose(c, torch.ones_like(c)) for c in itself.scales.values())


class PlainAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.q, self.k, self.v = (nn.Linear(4, 4) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        x = self.inp(x)
        weights = torch.softmax(self.q(x) @ self.k(x).transpose(-2, -1), dim=-1)
        return weights @ self.v(x)


class Penalized(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x))) + self.fc1.weight.sum()


class Reshaping(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.size(0), -1))


class Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) if x.sum() > 0 else x


def test_refuses_what_it_cannot_derive() -> None:
    with pytest.raises(ValueError, match=r"`view`.*nn\.Flatten"):
        align(Reshaping(), Reshaping())
    with pytest.raises(
        ValueError, match=r"node `sum\w*` \(method `\.sum\(\)`\) uses the permuted tensor `fc1\.weight`"
    ):
        align(Penalized(), Penalized())
    with pytest.raises(ValueError, match=r"torch\.fx symbolic tracing.*Branching"):
        align(Branching(), Branching())
    with pytest.raises(
        ValueError,
        match=r"node `transpose` \(method `\.transpose\(\)`\).*nn\.MultiheadAttention for attention",
    ):
        align(PlainAttention(), PlainAttention())  # a hand-written attention: use nn.MultiheadAttention
    grouped = nn.Sequential(nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 1, groups=2), nn.Flatten(), nn.Linear(4, 1))
    with pytest.raises(ValueError, match=r"module `1` \(Conv2d\) is a grouped convolution"):
        align(grouped, copy.deepcopy(grouped))
    # an unknown op on the (never permuted) input is fine
    net = nn.Sequential(nn.Unflatten(1, (2, 5)), nn.Flatten(), nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 1))
    assert sorted(align(net, copy.deepcopy(net)).permutations) == ["2"]


def test_bad_arguments_are_refused_by_name() -> None:
    a, b = mlp(), mlp()
    with pytest.raises(TypeError, match="`reference`"):
        align("net", b)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`other` must have the architecture"):
        align(a, nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)))
    with pytest.raises(ValueError, match="`method`"):
        align(a, b, "gradients")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`max_iter`"):
        align(a, b, max_iter=0)
    with pytest.raises(ValueError, match="`seed`"):
        align(a, b, seed=-1)
    with pytest.raises(TypeError, match="`rescale`"):
        align(a, b, rescale="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`batches` is required"):
        align(a, b, "activations", loss_fn=_loss_fn)
    with pytest.raises(ValueError, match="`loss_fn` is required"):
        align(a, b, "activations", [torch.zeros(1, 10)])
    with pytest.raises(ValueError, match="`batches` must hold"):
        align(a, b, "activations", [], _loss_fn)


def test_rescale_off_only_permutes() -> None:
    gen = torch.Generator().manual_seed(5)
    ref, other, _ = mlp_case(gen)
    result = align(ref, other, rescale=False)
    assert result.scales == {}
    norms = lambda m: sorted(m[0].weight.norm(dim=1).tolist())  # noqa: E731
    assert norms(result.model) == pytest.approx(norms(other), abs=1e-12)  # a permutation keeps the row norms


def _train(seed: int, x: Tensor, y: Tensor, steps: int = 300) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(1, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        opt.step()
    return net


def test_aligned_barrier_of_trained_networks_is_lower() -> None:
    x = torch.linspace(0, 1, 256)[:, None]
    y = torch.sin(3 * x)
    a, b = _train(0, x, y), _train(1, x, y)
    batch = (x, y)
    with torch.no_grad():
        assert max(_loss_fn(a, batch), _loss_fn(b, batch)) < 1e-3  # both trained
    raw = _barrier(_line(a, b, batch, 21))
    assert raw > 0.1  # measured 0.50: far apart as they stand
    for method in ("weights", "activations"):  # measured 0.004 and 0.015
        aligned = align(a, b, method, [batch], _loss_fn).model
        assert _barrier(_line(a, aligned, batch, 21)) < raw / 4, method


def test_functional_distance_against_hand_counts() -> None:
    gen = torch.Generator().manual_seed(0)
    a = nn.Linear(4, 3)
    b = copy.deepcopy(a)
    x = torch.randn(50, 4, generator=gen)
    with torch.no_grad():
        b.bias[0] += 5.0  # class 0 wins more often under b
        expected = float((a(x).argmax(1) != b(x).argmax(1)).double().mean())
    d = functional_distance(a, b, [x[:20], (x[20:], None)])
    assert isinstance(d, FunctionalDistance) and d.kind == "disagreement" and d.count == 50
    assert d.value == pytest.approx(expected, abs=1e-15) and 0 < float(d) < 1
    # regression: a bias shifted by delta is an RMS distance of exactly |delta|
    r = nn.Linear(4, 1)
    s = copy.deepcopy(r)
    with torch.no_grad():
        s.bias += 0.25
    rms = functional_distance(r, s, [{"input": x}])
    assert rms.kind == "rms" and rms.value == pytest.approx(0.25, abs=1e-6)
    flat = functional_distance(r, s, [x], forward=lambda m, t: m(t).squeeze(-1))  # shape [N]: regression
    assert flat.kind == "rms" and flat.value == pytest.approx(0.25, abs=1e-6)
    forced = functional_distance(a, b, [x], forward=lambda m, t: m(t), kind="rms")
    assert forced.kind == "rms" and forced.value == pytest.approx(5 / 3**0.5, abs=1e-5)


def test_functional_distance_leaves_models_as_found_and_refuses_bad_input() -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)).train()
    other = copy.deepcopy(net)
    x = torch.randn(16, 4)
    rng = torch.get_rng_state()
    assert functional_distance(net, other, [x]).value == 0.0  # eval mode: no dropout
    assert net.training and all(m.training for m in net.modules())
    assert torch.equal(rng, torch.get_rng_state())
    with pytest.raises(ValueError, match="`kind`"):
        functional_distance(net, other, [torch.randn(2, 4)], kind="kl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`batches`"):
        functional_distance(net, other, [])
    with pytest.raises(TypeError, match="`model_b`"):
        functional_distance(net, None, [torch.randn(2, 4)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`forward"):
        functional_distance(net, other, [3])
    with pytest.raises(ValueError, match="differ in shape"):
        functional_distance(net, nn.Linear(4, 3), [torch.randn(2, 4)])
