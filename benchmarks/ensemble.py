"""The seed ensemble's training step against the fastest hand-written step, and against the machine's bound.

The task of arXiv 2212.13111: x ~ U[0, 1], target x^2 + 2x, a fresh batch of 1024 per step, squared error,
Adam with lr 0.01, a (1, 50, 50, 1) ReLU network, K seeds. Rows (ms per step of all K members, the median of
interleaved rounds in rotating order, one torch thread unless ``--threads``):

* ``SeedEnsemble / Trainer, compiled``: the default (``compile="auto"`` where inductor runs);
* ``SeedEnsemble / Trainer, eager``: ``compile=False``; ``..., Lightning's automatic loop``: the same on
  Lightning's automatic-optimization loop (what SeedEnsemble ran before its own step);
* ``vmapped losses, bare loop (compiled | eager)``: the same member losses and optimizer in a plain loop,
  no Lightning: the difference to the Trainer rows is Lightning's per-step cost;
* ``hand-written baddbmm (compiled + fused Adam | eager Adam)``: stacked ``[K, in, out]`` parameters,
  ``torch.baddbmm`` forward, members' losses summed, Adam on the stacked tensors (the authors' approach);
* ``bound``: FLOPs and bytes of one step against this machine's measured batched-matmul GFLOP/s and copy
  GB/s.

On a CPU the step clock is the thread's CPU time (one thread): other processes on a shared machine then do
not inflate it, where wall time would (``--clock wall`` for wall time). Every row trains on the same
pre-generated batches (the data generation is timed on its own and printed), and
the compile times are printed with their share of the paper's 10,000 steps. ``--sequential`` adds the older
comparison against K sequential single-seed runs. Run ``python benchmarks/ensemble.py --help``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from _stats import ratios as paired
from _stats import spread  # benchmarks/_stats.py
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import nn

from lightning_landscape import SeedEnsemble
from lightning_landscape.multiseed.vectorized import tune_cpu_allocator

LR = 0.01
PAPER_STEPS = 10_000
TRAINER = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}
Batch = tuple[torch.Tensor, torch.Tensor]


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 50), nn.ReLU(), nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 1))


def fresh_batches(seed: int, steps: int, batch: int, members: int, device: torch.device) -> list[Batch]:
    """``steps`` fresh batches of the paper's task, one slice per member: ``[K, B, 1]``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(steps):
        x = torch.rand((members, batch, 1), generator=gen, device=device)
        out.append((x, x * x + 2 * x))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# The step clock: wall time, or on a CPU (one thread) this thread's CPU time, which other processes on a
# shared machine do not inflate (set in main by --clock).
CLOCK: Callable[[], float] = time.perf_counter


def median_step(stamps: Sequence[float], warmup: int) -> float:
    """Median seconds between consecutive stamps, the first ``warmup`` steps left out."""
    diffs = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1 :], strict=False)]
    return statistics.median(diffs) if diffs else float("nan")


class Replay:
    """Iterates pre-generated batches (a bare list would be read by Lightning as a list of loaders)."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)


class StepTimer(Callback):
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def on_train_batch_end(self, *args: Any) -> None:
        sync(self.device)
        self.stamps.append(CLOCK())


# ---- contenders: each returns the step stamps of one run over `batches` ----------------------------------
def trainer_run(ensemble: SeedEnsemble, batches: list[Batch], device: torch.device) -> list[float]:
    timer = StepTimer(device)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    trainer = Trainer(
        max_steps=len(batches), callbacks=[timer], accelerator=accelerator, devices=1, **TRAINER
    )
    trainer.fit(ensemble, Replay(batches))
    return timer.stamps


def loop_run(
    loss: Callable[[Batch], torch.Tensor],
    opt: torch.optim.Optimizer,
    batches: list[Batch],
    device: torch.device,
) -> list[float]:
    stamps = []
    for batch in batches:
        total = loss(batch).sum()
        opt.zero_grad()
        total.backward()
        opt.step()
        sync(device)
        stamps.append(CLOCK())
    return stamps


class Hand:
    """The hand-written stacked step: parameters ``[K, in, out]``, ``baddbmm`` forward, losses summed."""

    def __init__(self, k: int, device: torch.device, compiled: bool) -> None:
        nets = [mlp() for _ in range(k)]
        linears = [[m for m in net if isinstance(m, nn.Linear)] for net in nets]
        self.weights = [
            torch.stack([ls[i].weight.detach().T for ls in linears]).to(device).requires_grad_(True)
            for i in range(3)
        ]
        self.biases = [
            torch.stack([ls[i].bias.detach()[None] for ls in linears]).to(device).requires_grad_(True)
            for i in range(3)
        ]
        params = self.weights + self.biases
        self.opt = (
            torch.optim.Adam(params, lr=LR, fused=True) if compiled else torch.optim.Adam(params, lr=LR)
        )
        self.forward: Callable[..., torch.Tensor] = torch.compile(self.losses) if compiled else self.losses

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        (w1, w2, w3), (b1, b2, b3) = self.weights, self.biases
        h = torch.relu(torch.baddbmm(b1, x, w1))
        h = torch.relu(torch.baddbmm(b2, h, w2))
        return (torch.baddbmm(b3, h, w3) - y).pow(2).mean(dim=(1, 2))

    def __call__(self, batch: Batch) -> torch.Tensor:
        return self.forward(*batch)


class AutomaticLoop(SeedEnsemble):
    """SeedEnsemble on Lightning's automatic-optimization loop (what it used before its own step)."""

    @property
    def automatic_optimization(self) -> bool:
        return True

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        raise AttributeError("fixed")


# ---- the bound ---------------------------------------------------------------------------------------
def measure_rates(k: int, batch: int, device: torch.device, repeat: int = 5) -> tuple[float, float, float]:
    """(layer-2 bmm GFLOP/s at this K, large sgemm GFLOP/s, copy GB/s counting read + write)."""

    def best(fn: Callable[[], Any]) -> float:
        fn()
        times = []
        for _ in range(repeat):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
        return min(times)

    a, b = torch.rand(k, batch, 50, device=device), torch.rand(k, 50, 50, device=device)
    bmm = 2 * k * batch * 50 * 50 / best(lambda: torch.bmm(a, b)) / 1e9
    m = torch.rand(1024, 1024, device=device)
    gemm = 2 * 1024**3 / best(lambda: m @ m) / 1e9
    src, dst = torch.rand(16 * 2**20, device=device), torch.empty(16 * 2**20, device=device)
    copy = 2 * src.numel() * 4 / best(lambda: dst.copy_(src)) / 1e9
    return bmm, gemm, copy


def step_cost(k: int, batch: int) -> tuple[float, float, float]:
    """(FLOPs of one step, FLOPs of its layer-2 matmuls, bytes it must move at least), float32.

    Matmul work: forward, gradient of the input (not for layer 1) and of the weight, 2 FLOPs per
    multiply-add. Bytes: the two [K, B, 50] activations are written and read back in the forward, read
    for the weight gradients and the ReLU masks, their gradients written and read twice; ~12 passes over
    one activation. Adam reads parameter, gradient and two moments and writes three of them.
    """
    macs_fwd = 1 * 50 + 50 * 50 + 50 * 1
    macs = 3 * macs_fwd - 1 * 50
    flops = 2.0 * k * batch * macs
    layer2 = 2.0 * k * batch * 3 * 50 * 50
    params = k * (50 + 50 + 50 * 50 + 50 + 50 + 1)
    nbytes = 12.0 * k * batch * 50 * 4 + 7.0 * params * 4
    return flops, layer2, nbytes


# ---- the table ---------------------------------------------------------------------------------------
ROWS = (
    "SeedEnsemble / Trainer, compiled",
    "SeedEnsemble / Trainer, eager",
    "SeedEnsemble / Trainer, eager, Lightning's automatic loop",
    "vmapped losses, bare loop, compiled",
    "vmapped losses, bare loop, eager",
    "hand-written baddbmm, compiled + fused Adam",
    "hand-written baddbmm, eager Adam",
)


def bench_k(k: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    steps, warmup = args.steps, args.warmup
    compiled_ens = SeedEnsemble(mlp, seeds=k, loss="mse", lr=LR, per_seed_data=True, compile=True)
    eager_ens = SeedEnsemble(mlp, seeds=k, loss="mse", lr=LR, per_seed_data=True, compile=False)
    auto_ens = AutomaticLoop(mlp, seeds=k, loss="mse", lr=LR, per_seed_data=True, compile=False)
    torch.manual_seed(k)
    hand_c, hand_e = Hand(k, device, compiled=True), Hand(k, device, compiled=False)
    compile_s: dict[str, float] = {}

    # Warm-up (and compile) every contender once, untimed.
    warm = fresh_batches(1, 3, args.batch, k, device)
    trainer_run(compiled_ens, warm, device)
    assert compiled_ens.compile_active, compiled_ens.compile_reason
    compile_s["SeedEnsemble"] = float(compiled_ens.compile_seconds or 0.0)
    trainer_run(eager_ens, warm, device)
    trainer_run(auto_ens, warm, device)
    start = time.perf_counter()
    loop_run(hand_c, hand_c.opt, warm[:1], device)
    compile_s["hand-written"] = time.perf_counter() - start
    loop_run(hand_e, hand_e.opt, warm, device)
    members = list(compiled_ens.members.parameters())
    bare_c_opt = torch.optim.Adam(members, lr=LR, fused=True)
    bare_e_opt = torch.optim.Adam(list(eager_ens.members.parameters()), lr=LR)
    # The bare compiled loop reuses the ensemble's own compiled loss (no second compile).
    bare_c = compiled_ens._training_losses
    bare_e = eager_ens.member_losses

    start = time.perf_counter()
    data = fresh_batches(2, steps, args.batch, k, device)
    sync(device)
    data_ms = (time.perf_counter() - start) / steps * 1e3

    times: dict[str, list[float]] = {row: [] for row in ROWS}
    for round_ in range(args.rounds):
        runs = {
            ROWS[0]: lambda: trainer_run(compiled_ens, data, device),
            ROWS[1]: lambda: trainer_run(eager_ens, data, device),
            ROWS[2]: lambda: trainer_run(auto_ens, data, device),
            ROWS[3]: lambda: loop_run(bare_c, bare_c_opt, data, device),
            ROWS[4]: lambda: loop_run(bare_e, bare_e_opt, data, device),
            ROWS[5]: lambda: loop_run(hand_c, hand_c.opt, data, device),
            ROWS[6]: lambda: loop_run(hand_e, hand_e.opt, data, device),
        }
        order = list(runs)
        order = order[round_ % len(order) :] + order[: round_ % len(order)]  # no contender always first
        for row in order:
            times[row].append(median_step(runs[row](), warmup))
    result = {row: statistics.median(v) * 1e3 for row, v in times.items()}
    rounds = {row: [t * 1e3 for t in v] for row, v in times.items()}
    bmm_rate, gemm_rate, copy_rate = measure_rates(k, args.batch, device)
    flops, layer2, nbytes = step_cost(k, args.batch)
    return {
        "ms": result,
        "rounds": rounds,
        "data_ms": data_ms,
        "compile_s": compile_s,
        "bound": {
            "bmm_gflops": bmm_rate,
            "gemm_gflops": gemm_rate,
            "copy_gbs": copy_rate,
            "flops_ms": flops / (bmm_rate * 1e9) * 1e3,
            "layer2_ms": layer2 / (bmm_rate * 1e9) * 1e3,
            "bytes_ms": nbytes / (copy_rate * 1e9) * 1e3,
        },
    }


def print_table(ks: list[int], results: dict[int, dict[str, Any]]) -> None:
    width = max(len(r) for r in ROWS) + 2
    print(
        f"\n{'ms per step (median of interleaved rounds)':<{width}}" + "".join(f"{f'K={k}':>10}" for k in ks)
    )
    for row in ROWS:
        print(f"{row:<{width}}" + "".join(f"{results[k]['ms'][row]:>10.2f}" for k in ks))
    bound_rows = {
        "bound: all matmul FLOPs at the bmm rate": "flops_ms",
        "bound: layer-2 matmuls alone": "layer2_ms",
        "bound: minimal bytes at the copy rate": "bytes_ms",
    }
    for name, key in bound_rows.items():
        print(f"{name:<{width}}" + "".join(f"{results[k]['bound'][key]:>10.2f}" for k in ks))
    print(
        f"{'(data generation, excluded above)':<{width}}"
        + "".join(f"{results[k]['data_ms']:>10.2f}" for k in ks)
    )
    for k in ks:
        b = results[k]["bound"]
        print(
            f"measured at K={k}: layer-2 bmm {b['bmm_gflops']:.0f} GFLOP/s, 1024^3 sgemm "
            f"{b['gemm_gflops']:.0f} GFLOP/s, copy {b['copy_gbs']:.1f} GB/s (read + write)"
        )
    print("\nratios (lower is better for the first row):")
    ratios = {
        "SeedEnsemble compiled / hand-written compiled (goal <= 1.2)": (ROWS[0], ROWS[5]),
        "SeedEnsemble eager / hand-written eager": (ROWS[1], ROWS[6]),
        "SeedEnsemble compiled / SeedEnsemble eager": (ROWS[0], ROWS[1]),
        "SeedEnsemble eager: own step / Lightning's automatic loop": (ROWS[1], ROWS[2]),
        "hand-written compiled / hand-written eager": (ROWS[5], ROWS[6]),
    }
    rw = max(len(r) for r in ratios) + 2
    print("(per-round ratios: median [min, max] over the interleaved rounds)")
    for name, (a, b) in ratios.items():
        cells = [spread(paired(results[k]["rounds"][a], results[k]["rounds"][b])) for k in ks]
        print(f"{name:<{rw}}" + "".join(f"{cell:>24}" for cell in cells))
    print("\nwhat still differs from the hand-written compiled step, measured (ms per step):")
    diffs = {
        "Lightning's loop (Trainer compiled - bare loop compiled)": (ROWS[0], ROWS[3]),
        "vmapped graph vs hand-written graph (bare compiled - hand compiled)": (ROWS[3], ROWS[5]),
        "hand-written compiled step above the bound (hand compiled - all-FLOPs bound)": (ROWS[5], None),
    }
    dw = max(len(r) for r in diffs) + 2
    for name, (a, b) in diffs.items():
        vals = [
            results[k]["ms"][a] - (results[k]["ms"][b] if b else results[k]["bound"]["flops_ms"]) for k in ks
        ]
        print(f"{name:<{dw}}" + "".join(f"{v:>+10.2f}" for v in vals))
    print("\ncompile time, once per fit of a new ensemble (s), and its share of the paper's 10,000 steps:")
    for k in ks:
        c = results[k]["compile_s"]
        share = c["SeedEnsemble"] * 1e3 / PAPER_STEPS
        print(
            f"K={k}: SeedEnsemble {c['SeedEnsemble']:.1f} s (+{share:.2f} ms/step amortized, "
            f"{share / results[k]['ms'][ROWS[0]] * 100:.1f}%), hand-written {c['hand-written']:.1f} s"
        )


# ---- the older comparison: K sequential single-seed runs -----------------------------------------------
class Plain(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=LR)


def single_batches(seed: int, steps: int, batch: int) -> Iterator[Batch]:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.rand((batch, 1), generator=gen)
        yield x, x * x + 2 * x


def sequential(args: argparse.Namespace, ks: list[int], results: dict[int, dict[str, Any]]) -> None:
    """One seed by Lightning and by a plain loop, extrapolated to K (runs are independent: linear in K)."""
    device = torch.device(args.device)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    lit = []
    for seed in range(args.seq_seeds):
        seed_everything(seed, workers=True, verbose=False)
        timer = StepTimer(device)
        trainer = Trainer(
            max_steps=args.seq_steps, callbacks=[timer], accelerator=accelerator, devices=1, **TRAINER
        )
        trainer.fit(Plain(), Replay(list(single_batches(seed, args.seq_steps, args.batch))))
        lit.append(median_step(timer.stamps, args.warmup))
    plain = []
    for seed in range(args.seq_seeds):
        torch.manual_seed(seed)
        net = mlp().to(device)
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        data = [(x.to(device), y.to(device)) for x, y in single_batches(seed, args.seq_steps, args.batch)]
        plain.append(
            median_step(
                loop_run(lambda b, net=net: F.mse_loss(net(b[0]), b[1]), opt, data, device), args.warmup
            )
        )
    one_lit, one_plain = statistics.median(lit), statistics.median(plain)
    print(f"\none seed: Lightning {one_lit * 1e3:.2f} ms/step, plain loop {one_plain * 1e3:.2f} ms/step")
    print("K sequential runs EXTRAPOLATED as K x one seed; speed-up of the compiled SeedEnsemble:")
    for k in ks:
        ens = results[k]["ms"][ROWS[0]] / 1e3
        print(
            f"K={k}: vs K Lightning runs {k * one_lit / ens:.1f}x, "
            f"vs K plain loops {k * one_plain / ens:.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ks", default="8,64,300", help="ensemble sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per contender and round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument(
        "--clock", default=None, choices=["cpu", "wall"], help="step clock (default: cpu on a CPU, else wall)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="steps of each run left out of its median")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (same for every contender)")
    parser.add_argument("--batch", type=int, default=1024, help="fresh samples per step (paper: 1024)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where every contender runs")
    parser.add_argument("--sequential", action="store_true", help="also time K sequential single-seed runs")
    parser.add_argument(
        "--seq-seeds", type=int, default=3, help="sequential runs measured, then extrapolated"
    )
    parser.add_argument("--seq-steps", type=int, default=100, help="training steps per sequential run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    global CLOCK
    clock = args.clock or ("cpu" if device.type == "cpu" and args.threads == 1 else "wall")
    CLOCK = time.thread_time if clock == "cpu" else time.perf_counter
    # SeedEnsemble turns this on in its setup (process-wide); on from the start, every contender has it.
    tune_cpu_allocator()
    ks = [int(k) for k in args.ks.split(",")]
    print(
        f"task: x~U[0,1], y=x^2+2x, batch {args.batch} fresh per step, MSE, Adam lr {LR}, "
        "net (1,50,50,1) ReLU"
    )
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch threads: {args.threads}, torch {torch.__version__}, step clock: {clock}")
    results = {}
    for k in ks:
        start = time.perf_counter()
        results[k] = bench_k(k, args, device)
        print(f"K={k} measured in {time.perf_counter() - start:.0f} s", flush=True)
    print_table(ks, results)
    if args.sequential:
        sequential(args, ks, results)


if __name__ == "__main__":
    main()
