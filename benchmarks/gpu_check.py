"""One check of every GPU path, a few minutes on one GPU; ``--device cpu --tiny`` runs it in ``make test``.

What it does, each row of the printed table (also written as JSON with ``--out``):

1. fits a BatchNorm CNN and a small Transformer (Lightning's demo ``Transformer`` on synthetic tokens, no
   download) with the three monitors (GradientNormMonitor, HessianEigenMonitor, RiskGapMonitor) at
   ``precision="bf16-mixed"`` on a GPU (``--precision``; ``32-true`` on a CPU), asserts that every value
   they logged is finite and that the weights after training are bit-identical to a fit without them
   (same seed, ``deterministic=True``);
2. compares the CNN's top-5 Hessian eigenvalues on the device (float32) with the same probe on the CPU in
   float64, and times a top-5 probe of each model (Hessian-vector products and seconds);
3. times :class:`~lightning_landscape.SeedEnsemble` on the paper's task ((1,50,50,1) ReLU, a fresh batch of
   1024 per step, Adam) at K = 64 and 300: ms per step, the compile time, and the projected time of the
   paper's 10,000 steps;
4. times :class:`~lightning_landscape.MultiSeedTrainer` running 4 seeds sequentially;
5. the scale rows (issue 17): Hugging Face GPT-2 small (124M) and medium (355M) built from configs (nothing
   is downloaded; ``transformers``, the ``bench`` extra), batch 4 x 32: one AdamW training step in
   ``bf16-mixed`` against a top-1 Hessian probe in float32, their peaks (``torch.cuda.max_memory_allocated``)
   and the probe's wall time against its products' (targets 1.5x and 1.15x;
   :func:`benchmarks.scale.in_process`). The CPU form runs a tiny GPT-2 and reports no peaks (a resident
   set's peak needs a fresh process: ``benchmarks/scale.py``).

It exits with status 1 if any check failed (the table says which). On a lent GPU machine: ``make gpu-check``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# cuBLAS is deterministic only with a fixed workspace; must be set before CUDA initializes.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.demos.transformer import Transformer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape import (
    GradientNormMonitor,
    HessianEigenMonitor,
    MultiSeedTrainer,
    RiskGapMonitor,
    SeedEnsemble,
    hessian_eigenvalues,
)

PAPER_STEPS = 10_000
QUIET: dict[str, Any] = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}

# Sizes: (full GPU run, --tiny CPU run inside the test suite).
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "image": 32, "channels": 32, "n_images": 2048, "vocab": 2000, "width": 128, "layers": 2, "seq": 64,
        "n_seqs": 1024, "batch": 64, "epochs": 2, "ks": [64, 300], "ens_steps": 60, "seed_steps": 200,
        "every_n_steps": 8, "gpt2": ["124M", "355M"],
    },
    "tiny": {
        "image": 8, "channels": 4, "n_images": 64, "vocab": 16, "width": 8, "layers": 1, "seq": 6,
        "n_seqs": 64, "batch": 16, "epochs": 1, "ks": [4, 8], "ens_steps": 6, "seed_steps": 4,
        "every_n_steps": 4, "gpt2": ["tiny"],
    },
}  # fmt: skip


# ---- models -----------------------------------------------------------------------------------------
class _Probed(LightningModule):
    """Shared steps of the check's classifiers: ``loss(batch)`` logged for training and validation."""

    def loss(self, batch: Any) -> Tensor:
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch))


class CNN(_Probed):
    """Two conv + BatchNorm blocks and a linear head on synthetic 10-class images."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * c, 10),
        )  # fmt: skip

    def loss(self, batch: Any) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class TinyTransformer(_Probed):
    """Lightning's demo encoder-decoder Transformer predicting the next token of synthetic sequences."""

    def __init__(self, vocab: int = 2000, width: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.net = Transformer(
            vocab_size=vocab, ninp=width, nhead=2, nhid=2 * width, nlayers=layers, dropout=0.1
        )

    def loss(self, batch: Any) -> Tensor:
        x, y = batch
        out = self.net(x, y)
        return F.nll_loss(out.reshape(-1, out.size(-1)), y.reshape(-1))

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def image_data(n: int, size: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randn(n, 3, size, size, generator=g) + y.view(-1, 1, 1, 1) * 0.1
    return TensorDataset(x, y)


def token_data(n: int, seq: int, vocab: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n, seq + 1), generator=g)
    return TensorDataset(tokens[:, :-1], tokens[:, 1:])


class Regressor(LightningModule):
    """The paper's (1,50,50,1) ReLU net as a plain single-seed module, for the multi-seed run."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 50), nn.ReLU(), nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 1))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=0.01)


def paper_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 50), nn.ReLU(), nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 1))


def paper_data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g)
    return TensorDataset(x, x * x + 2 * x)


# ---- the checks --------------------------------------------------------------------------------------
class Table:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, check: str, value: Any, unit: str = "", ok: bool | None = None, note: str = "") -> None:
        if isinstance(value, float):
            value = float(f"{value:.6g}")
        self.rows.append({"check": check, "value": value, "unit": unit, "ok": ok, "note": note})

    def failed(self) -> list[str]:
        return [r["check"] for r in self.rows if r["ok"] is False]

    def print(self, header: str) -> None:
        print(f"\n{header}")
        w = max(len(r["check"]) for r in self.rows) + 2
        for r in self.rows:
            status = {True: "ok", False: "FAIL", None: ""}[r["ok"]]
            value = f"{r['value']}" + (f" {r['unit']}" if r["unit"] else "")
            print(f"{r['check']:<{w}}{value:>22}  {status:<4}  {r['note']}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def guarded(table: Table, name: str, fn: Callable[[], None]) -> None:
    """Run one check; an exception becomes a failed row (the other checks still run)."""
    try:
        fn()
    except Exception as err:  # a check that crashes is a result to report, not to hide
        traceback.print_exc()
        table.add(name, "error", ok=False, note=f"{type(err).__name__}: {str(err).splitlines()[0][:160]}")


def trainer_kwargs(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    return {"accelerator": accelerator, "devices": 1, "precision": args.precision, **QUIET, **extra}


def fit_monitored(
    table: Table, args: argparse.Namespace, name: str, make: Callable[[], LightningModule], data: Any
) -> LightningModule:
    """Fit with and without the three monitors; rows: finite values, bit-identical weights, wall times."""
    size = SIZES[args.size]
    train, val = data

    def fit(monitors: bool) -> tuple[LightningModule, Trainer, float]:
        seed_everything(0, workers=True, verbose=False)
        model = make()
        callbacks: list[Callback] = []
        if monitors:
            callbacks = [
                GradientNormMonitor(),
                HessianEigenMonitor(k=2, every_n_steps=size["every_n_steps"], tol=1e-2),
                RiskGapMonitor(),
            ]
        trainer = Trainer(
            max_epochs=size["epochs"], callbacks=callbacks, deterministic=True, **trainer_kwargs(args)
        )
        loaders = (
            DataLoader(train, batch_size=size["batch"], shuffle=True),
            DataLoader(val, batch_size=size["batch"]),
        )
        start = time.perf_counter()
        trainer.fit(model, *loaders)
        sync(torch.device(args.device))
        return model, trainer, time.perf_counter() - start

    plain, _, t_plain = fit(False)
    watched, trainer, t_watched = fit(True)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k not in ("train_loss", "val_loss")}
    logged = {k: v for k, v in logged.items() if not k.startswith(("train_loss", "val_loss"))}
    finite = bool(logged) and all(math.isfinite(v) for v in logged.values())
    bad = [k for k, v in logged.items() if not math.isfinite(v)]
    table.add(
        f"{name}: monitors' values finite", len(logged), "values", ok=finite,
        note=f"non-finite: {bad}" if bad else ", ".join(sorted(logged)[:3]) + ", ...",
    )  # fmt: skip
    a, b = plain.state_dict(), watched.state_dict()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    table.add(
        f"{name}: bit-identical with/without monitors", "yes" if not differing else "no", ok=not differing,
        note=f"differs: {differing[:3]}" if differing else f"{len(a)} tensors compared, deterministic=True",
    )  # fmt: skip
    table.add(f"{name}: fit without / with monitors", f"{t_plain:.1f} / {t_watched:.1f}", "s")
    return plain


def probe(
    table: Table, args: argparse.Namespace, name: str, model: LightningModule, batch: Any, compare: bool
) -> None:
    """Top-5 on the device (float32), timed; with ``compare`` also on the CPU in float64."""
    device = torch.device(args.device)
    model = model.to(device)

    def loss_fn(m: nn.Module, b: Any) -> Tensor:
        return m.loss(b)  # type: ignore[operator]

    on_device = [t.to(device) for t in batch]
    hessian_eigenvalues(model, loss_fn, [on_device], k=1, tol=1e-1)  # warm-up (kernels, allocator)
    sync(device)
    start = time.perf_counter()
    result = hessian_eigenvalues(model, loss_fn, [on_device], k=5, tol=1e-4)
    sync(device)
    seconds = time.perf_counter() - start
    table.add(
        f"{name}: top-5 probe on {args.device}", f"{seconds:.3f} s", "", note=f"{result.num_products} HVPs"
    )
    if not compare:
        return
    # A smaller probe for the comparison: float64 products on the CPU are slow.
    small = [t[:16] for t in batch]
    ours = hessian_eigenvalues(model, loss_fn, [[t.to(device) for t in small]], k=5, tol=1e-5).eigenvalues
    cpu = copy.deepcopy(model).to("cpu", torch.float64)
    cpu_batch = [t.to("cpu", torch.float64) if t.is_floating_point() else t.to("cpu") for t in small]
    reference = hessian_eigenvalues(cpu, loss_fn, [cpu_batch], k=5, tol=1e-7).eigenvalues
    ours = ours.detach().to("cpu", torch.float64)
    rel = ((ours - reference).abs() / reference.abs().clamp_min(1e-12)).max().item()
    tf32 = ""
    if device.type == "cuda":
        tf32 = (
            f"; TF32 matmul={torch.backends.cuda.matmul.allow_tf32} cudnn={torch.backends.cudnn.allow_tf32}"
        )
    table.add(
        f"{name}: top-5 {args.device} float32 vs CPU float64", rel, "max rel. err", ok=rel < args.eig_rtol,
        note=f"tolerance {args.eig_rtol:g}; lambda_1 = {reference[0].item():.6g}{tf32}",
    )  # fmt: skip


class StepTimer(Callback):
    def __init__(self, device: torch.device) -> None:
        self.device, self.stamps = device, []  # type: ignore[var-annotated]

    def on_train_batch_end(self, *args: Any) -> None:
        sync(self.device)
        self.stamps.append(time.perf_counter())


class Replay:
    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Any:
        return iter(self.batches)


def ensemble(table: Table, args: argparse.Namespace) -> None:
    size, device = SIZES[args.size], torch.device(args.device)
    compile_opt: Any = {"auto": "auto", "true": True, "false": False}[args.compile]
    steps = size["ens_steps"]
    for k in size["ks"]:
        gen = torch.Generator(device=device).manual_seed(k)
        xs = [torch.rand((k, 1024, 1), generator=gen, device=device) for _ in range(steps)]
        ens = SeedEnsemble(paper_mlp, seeds=k, lr=0.01, per_seed_data=True, compile=compile_opt)
        timer = StepTimer(device)
        Trainer(max_steps=steps, callbacks=[timer], **trainer_kwargs(args, precision="32-true")).fit(
            ens, Replay([(x, x * x + 2 * x) for x in xs])
        )
        warm = min(3, steps - 2)
        ms = (
            statistics.median(
                b - a for a, b in zip(timer.stamps[warm:], timer.stamps[warm + 1 :], strict=False)
            )
            * 1e3
        )
        compile_s = float(ens.compile_seconds or 0.0)
        projected = compile_s + ms * PAPER_STEPS / 1e3
        mode = "compiled" if ens.compile_active else f"eager ({ens.compile_reason})"
        table.add(f"SeedEnsemble K={k}: ms per step", ms, "ms", note=f"{mode}; compile {compile_s:.1f} s")
        table.add(
            f"SeedEnsemble K={k}: projected {PAPER_STEPS} steps", projected, "s",
            note="compile + 10,000 x step (goal on an H200: K=300 under 60 s)",
        )  # fmt: skip


def multiseed(table: Table, args: argparse.Namespace) -> None:
    size = SIZES[args.size]
    # One epoch of `seed_steps` steps, so each seed validates (its score) once at the end.
    train = DataLoader(paper_data(64 * size["seed_steps"], 1), batch_size=64, shuffle=True)
    val = DataLoader(paper_data(256, 2), batch_size=256)
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        accelerator = "gpu" if args.device == "cuda" else "cpu"
        trainer = MultiSeedTrainer(
            seeds=4,
            root_dir=root,
            max_epochs=1,
            accelerator=accelerator,
            devices=1,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        result = trainer.fit(Regressor, train_dataloaders=train, val_dataloaders=val)
        seconds = time.perf_counter() - start
    scores = [run.score for run in result.runs]
    ok = len(scores) == 4 and all(s is not None and math.isfinite(s) for s in scores)
    table.add(
        "MultiSeedTrainer: 4 seeds sequential", seconds, "s", ok=ok,
        note=f"{size['seed_steps']} steps each; {seconds / 4:.2f} s per seed",
    )  # fmt: skip


def gpt2_scale(table: Table, args: argparse.Namespace, size: str) -> None:
    """A bf16-mixed training step of a Hugging Face GPT-2 against a float32 top-1 probe (peaks, wall)."""
    import importlib.util

    name = f"GPT-2 {size}"
    if importlib.util.find_spec("transformers") is None:
        note = (
            "transformers is not installed: pip install -e '.[bench]' (configs only, nothing is downloaded)"
        )
        table.add(f"{name}: scale rows", "skipped", ok=False, note=note)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import scale

    r = scale.in_process(size, args.device, "bf16-mixed")
    if r["step_peak"] is None:
        note = "CPU: a resident-set peak needs a fresh process (benchmarks/scale.py)"
        table.add(f"{name}: bf16-mixed step peak", "n/a", note=note)
    else:
        table.add(
            f"{name}: bf16-mixed step peak", r["step_peak"] / 2**30, "GiB", note=f"{r['step_wall']:.3f} s"
        )
        table.add(
            f"{name}: top-1 float32 peak / step peak", r["probe_peak"] / r["step_peak"], "x",
            note=f"target <= 1.5x; {r['probe_peak'] / 2**30:.3f} GiB",
        )  # fmt: skip
    table.add(
        f"{name}: top-1 wall / (HVPs x one HVP)", r["probe_wall"] / (r["products"] * r["product"]), "x",
        note=f"target <= 1.15x; {r['products']} HVPs of {r['product']:.4f} s in {r['probe_wall']:.3f} s",
    )  # fmt: skip
    ok = r["converged"] and math.isfinite(r["value"])
    table.add(f"{name}: top-1 converged", r["value"], "lambda_1", ok=ok, note="float32, tol 1e-3")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU form inside `make test`)")
    parser.add_argument(
        "--precision", default=None, help="Lightning precision (default: bf16-mixed on a GPU)"
    )
    parser.add_argument(
        "--compile", default=None, choices=["auto", "true", "false"], help="SeedEnsemble compile"
    )
    parser.add_argument("--eig-rtol", type=float, default=1e-3, help="float32 vs float64 top-5 tolerance")
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on a CPU)")
    args = parser.parse_args()
    if args.threads is not None or args.device == "cpu":
        # On a shared CPU more threads than free cores spin against each other.
        torch.set_num_threads(args.threads or 1)
    args.size = "tiny" if args.tiny else "full"
    if args.precision is None:
        args.precision = "bf16-mixed" if args.device == "cuda" else "32-true"
    if args.compile is None:
        args.compile = "false" if args.tiny else "auto"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False (a CPU build of torch?)")
    size = SIZES[args.size]
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = (
        f"gpu_check on {name}: torch {torch.__version__}, precision {args.precision}, sizes {args.size}, "
        f"threads {torch.get_num_threads()}"
    )
    print(header, flush=True)
    table = Table()
    start = time.perf_counter()

    images = (
        image_data(size["n_images"], size["image"], 1),
        image_data(size["n_images"] // 4, size["image"], 2),
    )
    seqs = (
        token_data(size["n_seqs"], size["seq"], size["vocab"], 3),
        token_data(size["n_seqs"] // 4, size["seq"], size["vocab"], 4),
    )
    models: dict[str, LightningModule] = {}

    def cnn() -> None:
        models["cnn"] = fit_monitored(table, args, "CNN", lambda: CNN(size["channels"]), images)

    def transformer() -> None:
        make = lambda: TinyTransformer(size["vocab"], size["width"], size["layers"])  # noqa: E731
        models["transformer"] = fit_monitored(table, args, "Transformer", make, seqs)

    guarded(table, "CNN: fit", cnn)
    guarded(table, "Transformer: fit", transformer)
    if "cnn" in models:
        batch = images[0].tensors[0][: size["batch"]], images[0].tensors[1][: size["batch"]]
        guarded(table, "CNN: probe", lambda: probe(table, args, "CNN", models["cnn"], batch, compare=True))
    if "transformer" in models:
        batch = seqs[0].tensors[0][: size["batch"]], seqs[0].tensors[1][: size["batch"]]
        guarded(
            table, "Transformer: probe",
            lambda: probe(table, args, "Transformer", models["transformer"], batch, compare=False),
        )  # fmt: skip
    guarded(table, "SeedEnsemble", lambda: ensemble(table, args))
    guarded(table, "MultiSeedTrainer", lambda: multiseed(table, args))
    for gpt2 in size["gpt2"]:
        guarded(table, f"GPT-2 {gpt2}: scale rows", lambda gpt2=gpt2: gpt2_scale(table, args, gpt2))
    total = time.perf_counter() - start
    table.add("total wall time", total, "s")
    table.print(header)
    failed = table.failed()
    print(f"\n{'ALL CHECKS PASSED' if not failed else 'FAILED: ' + ', '.join(failed)}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"header": header, "device": name, "args": {k: str(v) for k, v in vars(args).items()}}
        args.out.write_text(json.dumps({**payload, "rows": table.rows, "failed": failed}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
