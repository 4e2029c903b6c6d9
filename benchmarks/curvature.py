"""Benchmark: eigenvalues vs pyhessian, the trace vs curvlinops, and one probe before/after one operator.

``eigen`` section, side by side in one run, on a shallow ReLU net (1-20-1, 64 points) and an MLP
784-256-256-10 (one batch of 512 synthetic samples), both float64 on the CPU:

* products and wall time for the top-1 and top-5 eigenvalues at ``tol=1e-3``, ours vs pyhessian, and
  how many returned values are in fact within 1e-3 relative of the truth;
* the cost of one Hessian-vector product relative to one gradient, with the graph reused vs recomputed.

Truth: dense ``torch.linalg.eigvalsh`` for the shallow net; for the MLP (270k parameters, no dense
Hessian) a tight Lanczos run of ours (``tol=1e-8``), validated against dense on the shallow net first.

``trace`` section: at equal product budgets (a small Transformer, n = 1762, 200 products; a BatchNorm CNN
in eval mode, n = 1986, 50 products), 5 seeds (and 25, ``TRACE_SEEDS``, for medians that noise moves
less), float64, one thread, interleaved rounds: the median relative error against the dense trace
(``torch.autograd.functional.hessian``, plain double backward) and the median wall time (operator
construction included) of our Hutchinson / Hutch++ / XTrace (batched products) and curvlinops 3's
``hutchinson_trace`` / ``hutchpp_trace`` / ``xtrace`` on its ``HessianLinearOperator``
(``pip install curvlinops-for-pytorch``; skipped if absent). Also printed: how far each operator's
products are from the dense Hessian's.

``probe`` section: one HessianEigenMonitor-style probe (top-3 + smallest + 100-probe Hutchinson trace +
SLQ density, 1 run x 50 steps) on the same two models, before (three model-level calls, each building its
own operator, one product per backward) and after (one operator, batched products): products, gradient
graphs built and wall time, interleaved rounds.

Run: ``python benchmarks/curvature.py [eigen] [trace] [probe]`` (default: all; a few minutes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from _stats import ratios, spread  # benchmarks/_stats.py
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_landscape.curvature import (
    HessianOperator,
    hessian_eigenvalues,
    hessian_trace,
    hutchinson,
    hutchpp,
    lanczos,
    slq,
    spectral_density,
    xtrace,
)

DTYPE = torch.float64
REL = 1e-3
EIGEN_ROUNDS = 3


def mse(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    return nn.functional.mse_loss(model(batch[0]), batch[1])


def ce(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def shallow_relu() -> tuple[nn.Module, Callable[..., Tensor], list[Any]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 20), nn.ReLU(), nn.Linear(20, 1)).to(DTYPE)
    x = torch.rand(64, 1, dtype=DTYPE)
    y = x**2 + 2 * x
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        mse(model, (x, y)).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, mse, [(x, y)]


def mlp() -> tuple[nn.Module, Callable[..., Tensor], list[Any]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    ).to(DTYPE)
    # Synthetic, learnable: labels from a random linear teacher; a few SGD steps off initialization.
    x = torch.randn(512, 784, dtype=DTYPE)
    y = (x @ torch.randn(784, 10, dtype=DTYPE)).argmax(dim=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        ce(model, (x, y)).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, ce, [(x, y)]


def dense_top(model: nn.Module, loss_fn: Callable[..., Tensor], batches: list[Any], k: int) -> Tensor:
    params = [p for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def f(v: Tensor) -> Tensor:
        tensors, off = {}, 0
        for n, p in zip(names, params, strict=True):
            tensors[n] = v[off : off + p.numel()].view_as(p)
            off += p.numel()
        out = torch.func.functional_call(model, tensors, (batches[0][0],))
        return nn.functional.mse_loss(out, batches[0][1])

    return torch.linalg.eigvalsh(torch.autograd.functional.hessian(f, flat)).flip(0)[:k]


def accurate(values: Tensor, truth: Tensor) -> int:
    return int((((values - truth).abs() / truth.abs()) <= REL).sum())


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def product_cost(
    model: nn.Module, loss_fn: Callable[..., Tensor], batches: list[Any], reps: int
) -> dict[str, list[float]]:
    params = [p for p in model.parameters() if p.requires_grad]

    def gradient() -> None:
        torch.autograd.grad(loss_fn(model, batches[0]), params)

    ops = {m: HessianOperator(model, loss_fn, batches, memory=m) for m in ("reuse", "recompute")}
    v = torch.randn(ops["reuse"].num_params, dtype=DTYPE)
    fns: dict[str, Callable[[], Any]] = {"gradient": gradient}
    fns.update({m: (lambda o=op: o.matvec(v)) for m, op in ops.items()})
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(reps):  # interleaved rounds
        for name, fn in fns.items():
            times[name].append(timed(fn)[1])
    return times


def eigen_section() -> None:
    rows = []
    validation = ""
    for label, build in [("shallow ReLU 1-20-1", shallow_relu), ("MLP 784-256-256-10", mlp)]:
        model, loss_fn, batches = build()
        n = sum(p.numel() for p in model.parameters())
        if label.startswith("shallow"):
            truth = dense_top(model, loss_fn, batches, 5)
            source = "dense eigvalsh"
            tight = hessian_eigenvalues(model, loss_fn, batches, k=5, tol=1e-8).eigenvalues
            err = float(((tight - truth).abs() / truth.abs()).max())
            validation = f"tight Lanczos (tol=1e-8) vs dense on the shallow net: max rel. error {err:.1e}"
        else:
            res = hessian_eigenvalues(model, loss_fn, batches, k=5, tol=1e-8, max_iter=400)
            truth = res.eigenvalues
            source = f"Lanczos tol=1e-8 ({res.num_products} products, converged={res.converged})"
        costs = product_cost(model, loss_fn, batches, reps=3 if n > 1000 else 20)
        for k in (1, 5):
            walls: dict[str, list[float]] = {"lanczos": [], "pyhessian": []}
            results: dict[str, Any] = {}
            for r in range(EIGEN_ROUNDS):  # interleaved rounds, the order alternating
                for backend in ("lanczos", "pyhessian") if r % 2 == 0 else ("pyhessian", "lanczos"):
                    start = time.perf_counter()
                    results[backend] = hessian_eigenvalues(
                        model, loss_fn, batches, k=k, tol=1e-3, backend=backend
                    )
                    walls[backend].append(time.perf_counter() - start)
            for backend in ("lanczos", "pyhessian"):
                res = results[backend]
                rows.append(
                    (label, k, backend, res.num_products, walls, accurate(res.eigenvalues, truth[:k]), k)
                )
        print(f"\n{label}: n={n} parameters, truth = {source}")
        print("  top-5 truth: " + ", ".join(f"{t:.6g}" for t in truth.tolist()))
        print(
            f"  one product / one gradient: reuse {spread(ratios(costs['reuse'], costs['gradient']))}, "
            f"recompute {spread(ratios(costs['recompute'], costs['gradient']))} "
            f"(gradient {_median(costs['gradient']) * 1e3:.2f} ms; "
            f"median [range] of {len(costs['gradient'])} rounds)"
        )
    print(f"\n{validation}")
    header = (
        f"{'model':<22}{'k':>3}  {'backend':<10}{'products':>9}{'wall s (median)':>16}{'accurate (1e-3)':>17}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for label, k, backend, prods, walls, acc, kk in rows:
        print(
            f"{label:<22}{k:>3}  {backend:<10}{prods:>9}{_median(walls[backend]):>16.3f}{f'{acc}/{kk}':>17}"
        )
    print(
        "\nratio pyhessian/ours: products, and wall time "
        f"(median [range] of {EIGEN_ROUNDS} interleaved rounds)"
    )
    for i in range(0, len(rows), 2):
        ours, theirs = rows[i], rows[i + 1]
        wall = spread(ratios(ours[4]["pyhessian"], ours[4]["lanczos"]))
        print(f"  {ours[0]:<22} top-{ours[1]}: {theirs[3] / ours[3]:.1f}x products, wall {wall}")


class TinyTransformer(nn.Module):
    """Token embedding, one post-norm encoder layer (2 heads, SDPA attention, LayerNorm), a linear head."""

    def __init__(self, vocab: int = 10, width: int = 16, hidden: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layer = nn.TransformerEncoderLayer(width, 2, hidden, dropout=0.0, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.layer(self.embed(tokens))).flatten(0, 1)


def transformer() -> tuple[nn.Module, Callable[..., Tensor], list[Any]]:
    torch.manual_seed(0)
    model = TinyTransformer().to(DTYPE)
    tokens = torch.randint(0, 10, (32, 8))
    return model, ce, [(tokens, torch.roll(tokens, 1, 1).flatten())]


def bn_cnn() -> tuple[nn.Module, Callable[..., Tensor], list[Any]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(128, 10),
    ).to(DTYPE)  # fmt: skip
    x = torch.randn(64, 1, 8, 8, dtype=DTYPE)
    with torch.no_grad():  # running statistics away from their defaults; the Hessian is the eval-mode one
        model.train()
        model(x)
    model.eval()
    return model, ce, [(x, torch.randint(0, 10, (64,)))]


def dense_ce_hessian(model: nn.Module, batch: Any) -> Tensor:
    """The dense Hessian of the cross-entropy by plain double backward (no functorch), in eval mode."""
    names = [n for n, _ in model.named_parameters()]
    params = [p for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def f(v: Tensor) -> Tensor:
        tensors, off = {}, 0
        for n, p in zip(names, params, strict=True):
            tensors[n] = v[off : off + p.numel()].view_as(p)
            off += p.numel()
        out = torch.func.functional_call(model, tensors, (batch[0],))
        return nn.functional.cross_entropy(out, batch[1])

    with sdpa_kernel(SDPBackend.MATH):
        return torch.autograd.functional.hessian(f, flat).detach()


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _timed_call(fn: Callable[[int], float], seed: int) -> tuple[float, float]:
    start = time.perf_counter()
    out = fn(seed)
    return out, time.perf_counter() - start


def _trace_model(curvlinops: Any, label: str, build: Callable[[], Any], budget: int, seeds: range) -> None:
    model, loss_fn, batches = build()
    n = sum(p.numel() for p in model.parameters())
    dense = dense_ce_hessian(model, batches[0])
    exact = float(dense.trace())
    params = list(model.parameters())

    def ours(estimator: Callable[..., Any], **kwargs: int) -> Callable[[int], float]:
        return lambda seed: estimator(HessianOperator(model, loss_fn, batches), seed=seed, **kwargs).trace

    def peer(estimator: Callable[..., Tensor], matvecs: int) -> Callable[[int], float]:
        def run(seed: int) -> float:
            torch.manual_seed(seed)
            with sdpa_kernel(SDPBackend.MATH):  # CPU flash attention has no double backward
                op = curvlinops.HessianLinearOperator(
                    model,
                    nn.CrossEntropyLoss(),
                    params,
                    batches,
                    progressbar=False,
                    check_deterministic=False,
                )
                return float(estimator(op, matvecs))

        return run

    mine = {
        "ours hutchinson": ours(hutchinson, num_samples=budget),
        "ours hutch++": ours(hutchpp, num_products=budget),
        "ours xtrace": ours(xtrace, num_products=budget),
    }
    peers = {
        "curvlinops hutchinson": peer(curvlinops.hutchinson_trace, budget),
        "curvlinops hutch++": peer(curvlinops.hutchpp_trace, budget - budget % 3),
        "curvlinops xtrace": peer(curvlinops.xtrace, budget - budget % 2),
    }
    # How right is each operator? Products of 8 random vectors against the dense Hessian.
    V = torch.randn(n, 8, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    want = dense @ V
    with sdpa_kernel(SDPBackend.MATH):
        theirs = (
            curvlinops.HessianLinearOperator(
                model, nn.CrossEntropyLoss(), params, batches, progressbar=False, check_deterministic=False
            )
            @ V
        )
    product_err = {
        "ours": float((HessianOperator(model, loss_fn, batches).matmat(V) - want).norm() / want.norm()),
        "curvlinops": float((theirs - want).norm() / want.norm()),
    }
    methods = {**mine, **peers}
    names = list(methods)
    errors: dict[str, list[float]] = {m: [] for m in names}
    walls: dict[str, list[float]] = {m: [] for m in names}
    for seed in seeds:  # interleaved rounds, the order rotating
        for name in names[seed % len(names) :] + names[: seed % len(names)]:
            est, wall = _timed_call(methods[name], seed)
            errors[name].append(abs(est - exact) / abs(exact))
            walls[name].append(wall)
    print(
        f"\n{label}: n={n}, {budget} products, dense trace {exact:.6g}; Hessian-vector products vs dense: "
        f"ours {product_err['ours']:.1e}, curvlinops {product_err['curvlinops']:.1e} (relative)"
    )
    few = len(seeds) if len(seeds) <= 5 else 5
    print(f"  {'method':<24}{f'error, {few} seeds':>16}{f'error, {len(seeds)} seeds':>17}{'wall s':>9}")
    for name in names:
        print(
            f"  {name:<24}{_median(errors[name][:few]):>16.4f}{_median(errors[name]):>17.4f}"
            f"{_median(walls[name]):>9.3f}"
        )
    for count in sorted({few, len(seeds)}):
        err = {m: _median(errors[m][:count]) for m in names}
        best_peer = min(peers, key=err.__getitem__)
        fastest_peer = min(peers, key=lambda m: _median(walls[m]))
        best = min(mine, key=err.__getitem__)
        wall = spread(ratios(walls[best][:count], walls[fastest_peer][:count]))
        print(
            f"  {count} seeds: {best} error {err[best] / err[best_peer]:.2f}x that of the most accurate peer "
            f"({best_peer}); wall {wall} that of the fastest peer ({fastest_peer}), per round"
        )


def trace_section() -> None:
    try:
        import curvlinops
    except ImportError:
        print("\ntrace: curvlinops is not installed (pip install curvlinops-for-pytorch): skipped")
        return
    seeds = range(int(os.environ.get("TRACE_SEEDS", "25")))
    print(
        "\ntrace at equal product budget, float64, 1 thread, interleaved rounds; error = median over seeds "
        "of |estimate - tr H| / |tr H| against the dense Hessian (the first 5 seeds, and all)"
    )
    _trace_model(curvlinops, "Transformer", transformer, 200, seeds)
    _trace_model(curvlinops, "BatchNorm CNN", bn_cnn, 50, seeds)


def _probe_before(model: nn.Module, loss_fn: Callable[..., Tensor], batches: list[Any]) -> int:
    """The probe as it was: three model-level calls, three operators, one product per backward pass."""
    return (
        hessian_eigenvalues(model, loss_fn, batches, k=3, which="both").num_products
        + hessian_trace(model, loss_fn, batches, num_samples=100).num_products
        + spectral_density(model, loss_fn, batches, num_iter=50, num_runs=1).num_products
    )


def _probe_after(model: nn.Module, loss_fn: Callable[..., Tensor], batches: list[Any]) -> int:
    """The probe now: one operator, every algorithm on it, batched products."""
    op = HessianOperator(model, loss_fn, batches)
    lanczos(op, k=3, which="both")
    hutchinson(op, num_samples=100)
    slq(op, num_iter=50, num_runs=1)
    op.close()
    return op.num_products


class _CountingOperators:
    """Counts the operators started while active; in "before" mode they run one backward per product.

    Every construction path (``HessianOperator(...)``, ``HessianOperator.from_inputs``) goes through
    ``HessianOperator._start(inputs, train_mode, seed, batched)``, which this wraps.
    """

    def __init__(self) -> None:
        self.count = 0
        self.before = False
        self._original = HessianOperator._start

    def __enter__(self) -> _CountingOperators:
        original, counter = self._original, self

        def start(op: HessianOperator, inputs: Any, train_mode: bool, seed: int, batched: bool) -> None:
            counter.count += 1
            original(op, inputs, train_mode, seed, batched and not counter.before)

        HessianOperator._start = start  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        HessianOperator._start = self._original  # type: ignore[method-assign]


def _probe_model(label: str, build: Callable[[], Any], rounds: int = 5) -> None:
    model, loss_fn, batches = build()
    walls: dict[str, list[float]] = {"before": [], "after": []}
    products: dict[str, int] = {}
    operators: dict[str, int] = {"before": 0, "after": 0}
    with _CountingOperators() as counter:
        for mode in ("before", "after"):  # warm-up, not timed: first-call allocations and lazy imports
            counter.before = mode == "before"
            (_probe_before if mode == "before" else _probe_after)(model, loss_fn, batches)
        for r in range(rounds):
            for mode in ["before", "after"] if r % 2 == 0 else ["after", "before"]:
                counter.before, start = mode == "before", counter.count
                fn = _probe_before if mode == "before" else _probe_after
                t0 = time.perf_counter()
                products[mode] = fn(model, loss_fn, batches)
                walls[mode].append(time.perf_counter() - t0)
                operators[mode] = counter.count - start
    b, a = _median(walls["before"]), _median(walls["after"])
    print(
        f"  {label:<14} before: {products['before']} products, {operators['before']} operators, {b:.3f} s"
        f" | after: {products['after']} products, {operators['after']} operator, {a:.3f} s"
        f" | after/before wall {spread(ratios(walls['after'], walls['before']))}"
    )


def probe_section() -> None:
    print(
        "\none probe: top-3 + smallest + trace (100 probes) + density (1 x 50 steps), "
        "medians, and the per-round ratio's median [range] over 5 interleaved rounds"
    )
    _probe_model("Transformer", transformer)
    _probe_model("BatchNorm CNN", bn_cnn)


SECTIONS = {"eigen": eigen_section, "trace": trace_section, "probe": probe_section}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
        epilog="Sections: eigen (vs pyhessian), trace (vs curvlinops), probe (one operator vs three).",
    )
    parser.add_argument("sections", nargs="*", metavar="SECTION", help="eigen, trace or probe (default: all)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}: choose from {list(SECTIONS)}")
    torch.set_num_threads(1)
    for section in args.sections or list(SECTIONS):
        SECTIONS[section]()


if __name__ == "__main__":
    main()
