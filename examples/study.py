"""The main job (``make demo``): does gradient descent from one random initialization end in a good point?

A reproduction of one of the numerical experiments of arXiv 2212.13111, exactly as the authors' script
sets it up (deeplearningmethods/overcome-bad-local-minima, ``Codes/P_ReLU_Adam_DNN_4Layer_He.py``): a ReLU
network (1, 50, 50, 1), He-normal weights and zero biases, fitted to :math:`f(x) = x^2 + 2x` for
:math:`X \\sim \\mathcal{U}[0, 1]` by Adam (0.9, 0.999, 1e-8) on a fresh batch of 1024 samples per step
(shared by all initializations, as in the script), learning rate :math:`0.01 \\cdot 0.5^{\\lfloor (i+1)/500
\\rfloor}` at step :math:`i`, 10,000 steps, 300 initializations, trained as one vectorized
:class:`~lightning_landscape.SeedEnsemble` (member ``s`` starts exactly as a single run after
``seed_everything(s)``)::

    python examples/study.py --paper          # 300 x 10,000: tens of minutes on a CPU, ~a minute on a GPU
    python examples/study.py                  # make demo: 64 to step 1,000, the best 4 to 10,000, ~4 min
    python examples/study.py --tiny           # seconds: the smoke test (its own folder, runs/demo_tiny)
    python examples/study.py --target teacher # a realizable target: the optimal risk is exactly 0
    tensorboard --logdir runs/demo

The demo keeps the paper's network, batch, optimizer and full schedule, and prunes by successive halving
(:mod:`lightning_landscape.multiseed.halving`): all 64 initializations train to step 1,000 (10% of the
budget) as one ensemble (``population_*`` files), the best 4 by population risk there train the paper's
10,000 steps as a second ensemble (rebuilt from their seeds, on the same batches: the report says how far
their risk at step 1,000 lies from the population's; 1.7% relative in one full run, 0 in the tiny test).
The end points classified are those 4, with the paper's budget; best-of-k is given over the population at
step 1,000 and over the survivors, labelled. An explicit ``--steps`` compresses the schedule as before
(halving every ``steps / 20``, the rung at ``steps / 10``).

What is written (``root_dir``), and read back by the analysis, which never uses what is in memory:

* ``trajectories.npz`` (``steps``, ``seeds``, ``risk``, ``grad_norm``, ``distance``: ``[K, T]`` arrays at
  log-spaced steps): the population risk :math:`\\mathcal{R}(\\theta_t)` on the midpoint grid, the norm
  of its *full* gradient :math:`\\|\\nabla\\mathcal{R}(\\theta_t)\\|`, and the distance
  :math:`\\|\\theta_t - \\theta_T\\|` to the limit point (the last iterate), per initialization;
* ``final_members.pt``: the last iterate of every member (tensors only, loaded with ``weights_only=True``);
* ``endpoints.csv``: per initialization the final risk, its gap to the best, :math:`\\|\\nabla\\mathcal{R}\\|`
  and the extreme Hessian eigenvalues at :math:`\\theta_T` (float64; Lanczos), and the point's kind;
* ``curves.csv`` (the paper's two curves: RMS over initializations of the gradient norm and of the
  distance to the limit point), ``best_of_k.csv``, the figures and ``report.md``.

**How an end point is classified** (:func:`lightning_landscape.multiseed.selection.classify_point`): it is
*near-critical* when :math:`\\|\\nabla \\mathcal{R}(\\theta_T)\\|_2 \\le` ``grad_tol``, and only then a
*minimum* (:math:`\\lambda_{\\min} \\ge -` ``eig_rtol`` :math:`\\cdot |\\lambda_{\\max}|`) or a *saddle*;
otherwise it is *not critical yet*. A rerun with the same arguments resumes from the files.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

# `python examples/study.py` puts examples/ (not the repository root) on sys.path.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from lightning.pytorch import Callback, LightningModule, Trainer  # noqa: E402
from typing_extensions import override  # noqa: E402

from examples.shallow_relu import ShallowReLU, ShallowReLUDataModule  # noqa: E402
from lightning_landscape.callbacks import progress_bar  # noqa: E402
from lightning_landscape.multiseed.selection import BestOfK, best_of_k, classify_point  # noqa: E402
from lightning_landscape.multiseed.vectorized import SeedEnsemble  # noqa: E402

TRAJECTORIES = "trajectories.npz"
FINAL_MEMBERS = "final_members.pt"
ENDPOINTS = "endpoints.csv"
CURVES = "curves.csv"
BEST_OF_K_CSV = "best_of_k.csv"
PLANE = "plane_best.npz"
BARRIERS = "barriers.csv"
#: How many of the lowest end points the barrier heatmap compares pairwise.
BARRIER_SEEDS = 8
FIGURES = (
    "final_risk_hist.png",
    "grad_norm.png",
    "distance_to_limit.png",
    "risk_gap.png",
    "hessian_eigs.png",
    "best_of_k.png",
    "plane_best.png",
    "barriers.png",
)
#: Successive halving's files (the demo only): the population's ensemble up to the rung, and the choice.
POPULATION = "population_"
HALVING_JSON = "halving.json"
HALVING_FILES = (f"{POPULATION}{TRAJECTORIES}", f"{POPULATION}{FINAL_MEMBERS}", HALVING_JSON)
DATA_FILES = (TRAJECTORIES, FINAL_MEMBERS, ENDPOINTS, CURVES, BEST_OF_K_CSV, PLANE, BARRIERS, "study.json")
REPORT_FILES = ("report.md", *FIGURES, *DATA_FILES)

_ENDPOINT_FIELDS = (
    "seed", "final_risk", "gap_to_best", "grad_norm", "eig_max", "eig_min", "eig_ratio", "eig_converged",
    "kind",
)  # fmt: skip


@dataclass
class StudyConfig:
    """Everything that decides the numbers; kept in ``study.json`` so that a rerun resumes the same study."""

    seeds: int = 64
    steps: int = 1500
    target: str = "quadratic"
    hidden: list[int] = field(default_factory=lambda: [50, 50])
    bias_init: str = "zero"
    lr: float = 0.01
    lr_halve_every: int = 75
    batch_size: int = 1024
    grid_size: int = 4096
    num_probes: int = 60
    data_seed: int = 5
    #: Successive halving: every initialization trains to step ``prune_at`` (0: no pruning), the best
    #: ``survivors_after(seeds, prune_keep)`` by population risk there continue to ``steps``.
    prune_at: int = 0
    prune_keep: float = 1.0


# The three sizes; an explicit --seeds/--steps/--hidden overrides the preset's value.
_PRESETS: dict[str, dict[str, Any]] = {
    # The paper's schedule for the survivors of one halving rung at 10% of it: 64 to 1,000, 4 to 10,000.
    "demo": {
        "seeds": 64,
        "steps": 10_000,
        "hidden": [50, 50],
        "lr_halve_every": 500,
        "prune_at": 1000,
        "prune_keep": 1 / 16,
    },
    "paper": {"seeds": 300, "steps": 10_000, "hidden": [50, 50], "lr_halve_every": 500},
    "tiny": dict(
        seeds=6, steps=60, hidden=[8, 8], lr_halve_every=20, batch_size=128, grid_size=256, num_probes=12
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(
            "The shallow ReLU study of arXiv 2212.13111 as one vectorized ensemble (make demo). "
            "--paper runs the authors' full set-up (300 initializations x 10,000 steps): it takes tens of "
            "minutes on a CPU (about an hour on a busy 2-core machine) and about a minute on a GPU; the "
            "default is a 64 x 1,500 scaled-down run of it (~3 min on 2 CPU cores); --tiny is a seconds-long "
            "smoke test."
        )
    )
    p.add_argument("--paper", action="store_true", help="the authors' scale: 300 inits x 10,000 steps")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="6 inits x 60 steps, widths (8, 8): a smoke test (with --paper too)",
    )
    p.add_argument(
        "--root_dir",
        default=None,
        help="run folder (default runs/demo, runs/paper; with --tiny runs/demo_tiny, runs/paper_tiny)",
    )
    p.add_argument("--seeds", type=int, default=None, help="number of initializations (members)")
    p.add_argument("--steps", type=int, default=None, help="Adam steps")
    p.add_argument("--hidden", type=int, nargs="+", default=None, help="hidden widths, e.g. 50 50")
    p.add_argument("--num_probes", type=int, default=None, help="log-spaced steps recorded for the panels")
    p.add_argument(
        "--prune_at", type=int, default=None,
        help="successive halving: all inits train to this step, the best --prune_keep to --steps (0: off)",
    )  # fmt: skip
    p.add_argument("--prune_keep", type=float, default=None, help="share of inits that pass the rung")
    p.add_argument("--target", default="quadratic", choices=("quadratic", "sin3", "x4sin", "teacher"))
    p.add_argument("--risk_rtol", type=float, default=0.05, help="one risk level: within best*(1+rtol)")
    p.add_argument("--grad_tol", type=float, default=1e-3, help="near-critical: ||grad R|| <= grad_tol")
    p.add_argument("--eig_rtol", type=float, default=1e-3, help="minimum: eig_min >= -eig_rtol*|eig_max|")
    p.add_argument("--hessian_tol", type=float, default=1e-3, help="Lanczos relative tolerance")
    p.add_argument("--fresh", action="store_true", help="delete root_dir first instead of resuming")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no Lightning banners")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch's default; 1 is fastest on a busy CPU)",
    )
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator (auto, cpu, gpu, ...)")
    args = p.parse_args(argv)
    for name in ("seeds", "steps", "num_probes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be >= 1, got {value}")
    if args.prune_at is not None and args.prune_at < 0:
        p.error(f"--prune_at must be >= 0 (0: no pruning), got {args.prune_at}")
    if args.prune_keep is not None and not 0 < args.prune_keep <= 1:
        p.error(f"--prune_keep must be a fraction in (0, 1], got {args.prune_keep}")
    if args.hidden is not None and any(h < 1 for h in args.hidden):
        p.error(f"--hidden must be positive widths, got {args.hidden}")
    for name in ("risk_rtol", "grad_tol", "eig_rtol"):
        if not getattr(args, name) >= 0:
            p.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not args.hessian_tol > 0:
        p.error(f"--hessian_tol must be > 0, got {args.hessian_tol}")
    return args


def preset_name(args: argparse.Namespace) -> str:
    return "tiny" if args.tiny else "paper" if args.paper else "demo"


def study_config(args: argparse.Namespace) -> StudyConfig:
    values: dict[str, Any] = dict(_PRESETS[preset_name(args)])
    if args.tiny and not args.paper:  # the demo's smoke test prunes too: 6 to step 20, the best 2 to 60
        values.update(prune_at=20, prune_keep=1 / 3)
    for name in ("seeds", "steps", "hidden", "num_probes", "prune_at", "prune_keep"):
        if getattr(args, name) is not None:
            values[name] = list(getattr(args, name)) if name == "hidden" else getattr(args, name)
    if args.steps is not None and preset_name(args) == "demo":
        # Keep the compressed schedule: twenty halvings over the run, as the paper's 10,000 / 500.
        values["lr_halve_every"] = max(1, args.steps // 20)
    if args.steps is not None and args.prune_at is None and values.get("prune_at"):
        values["prune_at"] = args.steps // 10  # the rung stays at 10% of the budget (0: too short to prune)
    values["target"] = args.target
    cfg = StudyConfig(**values)
    if cfg.prune_at >= cfg.steps:
        raise SystemExit(f"study.py: error: --prune_at ({cfg.prune_at}) must lie below --steps ({cfg.steps})")
    return cfg


def default_root(args: argparse.Namespace) -> Path:
    if args.root_dir:
        return Path(args.root_dir)
    # Each size has its own folder, so `make demo` after the smoke test resumes nothing it should not.
    return Path("runs") / f"{'paper' if args.paper else 'demo'}{'_tiny' if args.tiny else ''}"


# --- training: one vectorized ensemble ----------------------------------------------------------------


def member_net(hidden: list[int], bias_init: str) -> nn.Module:
    """The network of one initialization: what ``ShallowReLU`` builds (He-normal weights)."""
    return ShallowReLU(hidden=hidden, init="he", bias_init=bias_init).net  # type: ignore[arg-type]


class AuthorsHalving:
    """``lr_i = lr * 0.5 ** floor((i + 1) / every)`` at step ``i``, the authors' schedule
    ``0.01*0.5**(int((i+1)/500))`` (``StepLR`` would halve one step later)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def __call__(self, step: int) -> float:
        return 0.5 ** ((step + 1) // self.every)


class PaperEnsemble(SeedEnsemble):
    """:class:`SeedEnsemble` with the authors' learning-rate schedule (Adam, lr halved on their steps)."""

    def __init__(self, lr_halve_every: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lr_halve_every = lr_halve_every

    @override
    def configure_optimizers(self) -> Any:
        opt = super().configure_optimizers()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, AuthorsHalving(self.lr_halve_every))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def midpoint_grid(n: int, target: Any, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """The ``n``-point midpoint grid of [0, 1] and the target on it: its mean squared error is the
    population risk by the midpoint rule."""
    x = ((torch.arange(n, dtype=torch.float64) + 0.5) / n)[:, None]
    return x.to(dtype), target(x).to(dtype)


def probe_steps(steps: int, num: int) -> list[int]:
    """0, then ``num`` log-spaced steps up to and including ``steps``."""
    import numpy as np

    grid = np.unique(np.round(np.geomspace(1, steps, max(1, num))).astype(int))
    return sorted({0, *grid.tolist(), steps})


class PaperProbe(Callback):
    """At the chosen steps, per member: the grid risk, the norm of its full gradient, and a weight snapshot.

    Side-effect free: ``torch.autograd.grad`` leaves every ``.grad`` alone and nothing draws random numbers.
    """

    def __init__(self, steps: list[int], grid: tuple[Tensor, Tensor]) -> None:
        self.steps = set(steps)
        self.grid = grid
        self.at: list[int] = []
        self.risk: list[Tensor] = []
        self.grad_norm: list[Tensor] = []
        self.snapshots: list[Tensor] = []

    def _record(self, module: Any, step: int) -> None:
        params = list(module.members.parameters())
        batch = tuple(t.to(module.device) for t in self.grid)
        with torch.enable_grad():
            losses = module.member_losses(batch)
            grads = torch.autograd.grad(losses.sum(), params)
        k = module.num_members
        squares = torch.stack([g.detach().reshape(k, -1).pow(2).sum(1) for g in grads]).sum(0)
        self.at.append(step)
        self.risk.append(losses.detach().double().cpu())
        self.grad_norm.append(squares.sqrt().double().cpu())
        self.snapshots.append(torch.cat([p.detach().reshape(k, -1) for p in params], 1).cpu())

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if 0 in self.steps:
            self._record(pl_module, 0)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step in self.steps and trainer.global_step not in self.at:
            self._record(pl_module, trainer.global_step)

    def arrays(self) -> dict[str, Any]:
        """``steps [T]``, ``risk``/``grad_norm``/``distance`` ``[K, T]`` (distance to the last snapshot)."""
        last = self.snapshots[-1].double()
        distance = torch.stack([(s.double() - last).norm(dim=1) for s in self.snapshots], 1)
        return {
            "steps": torch.tensor(self.at).numpy(),
            "risk": torch.stack(self.risk, 1).numpy(),
            "grad_norm": torch.stack(self.grad_norm, 1).numpy(),
            "distance": distance.numpy(),
        }


def train(
    cfg: StudyConfig,
    root: Path,
    quiet: bool,
    accelerator: str,
    seeds: list[int] | None = None,
    steps: int | None = None,
    prefix: str = "",
) -> float:
    """Train the ensemble of ``seeds`` (default: all ``cfg.seeds``) for ``steps`` (default ``cfg.steps``),
    write ``<prefix>trajectories.npz`` and ``<prefix>final_members.pt``; returns the wall time."""
    import numpy as np
    from lightning.pytorch.loggers import TensorBoardLogger

    dm = ShallowReLUDataModule(
        target=cfg.target,  # type: ignore[arg-type]
        batch_size=cfg.batch_size,
        steps_per_epoch=min(cfg.steps, 1000),
        val_size=cfg.grid_size,
        seed=cfg.data_seed,
    )
    ensemble = PaperEnsemble(
        lr_halve_every=cfg.lr_halve_every,
        model=member_net,
        model_kwargs={"hidden": cfg.hidden, "bias_init": cfg.bias_init},
        loss="mse",
        seeds=list(range(cfg.seeds)) if seeds is None else seeds,
        optimizer="adam",
        lr=cfg.lr,
        betas=(0.9, 0.999),
        eps=1e-8,
        optimal_risk=0.0 if cfg.target == "teacher" else None,
    )
    max_steps = cfg.steps if steps is None else steps
    at = probe_steps(max_steps, cfg.num_probes)
    if 0 < cfg.prune_at < max_steps:
        at = sorted({*at, cfg.prune_at})  # the survivors' risk at the rung, to check against the population's
    probe = PaperProbe(at, midpoint_grid(cfg.grid_size, dm.target))
    trainer = Trainer(
        max_steps=max_steps,
        accelerator=accelerator,
        devices=1,
        logger=TensorBoardLogger(
            save_dir=str(root), name=f"{prefix}ensemble", version="", default_hp_metric=False
        ),
        log_every_n_steps=max(1, max_steps // 50),
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=not quiet,
        enable_progress_bar=not quiet,
        # A live bar on a terminal, one line per epoch in `make demo > log` or CI.
        callbacks=[probe] if quiet else [probe, progress_bar()],
        default_root_dir=str(root),
    )
    start = time.perf_counter()
    trainer.fit(ensemble, train_dataloaders=dm.train_dataloader())
    wall = time.perf_counter() - start
    arrays = probe.arrays()
    arrays["seeds"] = np.asarray(ensemble.seeds)
    np.savez(root / f"{prefix}{TRAJECTORIES}", **arrays)
    state = {name: t.detach().cpu().clone() for name, t in ensemble.members.state_dict().items()}
    saved = {"seeds": list(ensemble.seeds), "state": state, "wall_time": wall}
    torch.save(saved, root / f"{prefix}{FINAL_MEMBERS}")
    return wall


# --- analysis: only what is on disk -------------------------------------------------------------------


@dataclass
class Endpoint:
    seed: int
    final_risk: float
    gap_to_best: float
    grad_norm: float
    eig_max: float
    eig_min: float
    eig_ratio: float
    eig_converged: bool
    kind: str


def load_members(root: Path, cfg: StudyConfig) -> tuple[list[int], list[nn.Module], float]:
    """The last iterate of every member as plain float64 networks, from ``final_members.pt``."""
    saved = torch.load(root / FINAL_MEMBERS, map_location="cpu", weights_only=True)
    nets = []
    for k in range(len(saved["seeds"])):
        net = member_net(cfg.hidden, cfg.bias_init).to(torch.float64)
        net.load_state_dict({name: t[k].to(torch.float64) for name, t in saved["state"].items()})
        nets.append(net)
    return [int(s) for s in saved["seeds"]], nets, float(saved.get("wall_time", math.nan))


def _mse(net: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    return nn.functional.mse_loss(net(batch[0]), batch[1])


def measure_endpoints(cfg: StudyConfig, root: Path, args: argparse.Namespace) -> list[Endpoint]:
    """Risk, full gradient norm and extreme Hessian eigenvalues at each member's last iterate (float64)."""
    from lightning_landscape.curvature import hessian_eigenvalues

    seeds, nets, _ = load_members(root, cfg)
    dm_target = ShallowReLUDataModule(target=cfg.target, val_size=8).target  # type: ignore[arg-type]
    grid = midpoint_grid(cfg.grid_size, dm_target, torch.float64)
    raw = []
    for seed, net in zip(seeds, nets, strict=True):
        loss = _mse(net, grid)
        grads = torch.autograd.grad(loss, list(net.parameters()))
        g = float(torch.sqrt(sum((gr**2).sum() for gr in grads)))
        eig = hessian_eigenvalues(net, _mse, [grid], k=1, which="both", tol=args.hessian_tol)
        assert eig.smallest is not None
        raw.append(
            (seed, float(loss.detach()), g, float(eig.eigenvalues[0]), float(eig.smallest[0]), eig.converged)
        )
    best = min(r[1] for r in raw)
    out = []
    for seed, risk, g, top, low, conv in raw:
        out.append(
            Endpoint(
                seed=seed,
                final_risk=risk,
                gap_to_best=risk - best,
                grad_norm=g,
                eig_max=top,
                eig_min=low,
                eig_ratio=low / top if top != 0 else math.nan,
                eig_converged=bool(conv),
                kind=classify_point(g, low, top, grad_tol=args.grad_tol, eig_rtol=args.eig_rtol),
            )
        )
    return out


def write_endpoints(root: Path, endpoints: list[Endpoint]) -> None:
    with open(root / ENDPOINTS, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_ENDPOINT_FIELDS)
        writer.writeheader()
        for e in endpoints:
            writer.writerow(asdict(e))


def read_endpoints(root: Path, args: argparse.Namespace) -> list[Endpoint]:
    """``endpoints.csv`` with the kinds re-derived from the numbers (the tolerances may have changed)."""
    out = []
    with open(root / ENDPOINTS, newline="") as f:
        for row in csv.DictReader(f):
            e = Endpoint(
                seed=int(row["seed"]),
                final_risk=float(row["final_risk"]),
                gap_to_best=float(row["gap_to_best"]),
                grad_norm=float(row["grad_norm"]),
                eig_max=float(row["eig_max"]),
                eig_min=float(row["eig_min"]),
                eig_ratio=float(row["eig_ratio"]),
                eig_converged=row["eig_converged"] == "True",
                kind="",
            )
            e.kind = classify_point(e.grad_norm, e.eig_min, e.eig_max, args.grad_tol, args.eig_rtol)
            out.append(e)
    return out


def rms(values: Any, axis: int = 0) -> Any:
    """Root mean square over initializations (the authors' ``norm(.) / sqrt(M)``)."""
    import numpy as np

    return np.sqrt(np.mean(np.square(values), axis=axis))


def read_trajectories(root: Path, prefix: str = "") -> dict[str, Any]:
    import numpy as np

    with np.load(root / f"{prefix}{TRAJECTORIES}", allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def select_survivors(root: Path, cfg: StudyConfig) -> dict[str, Any]:
    """The rung of successive halving, read from the population's files: every initialization's
    population risk at step ``prune_at`` and the best ``survivors_after(seeds, prune_keep)`` of them
    (ties: the lower seed)."""
    from lightning_landscape.multiseed.halving_simulation import survivors_after
    from lightning_landscape.multiseed.selection import rank_by_validation

    traj = read_trajectories(root, POPULATION)
    assert int(traj["steps"][-1]) == cfg.prune_at, "the population's last probe is the rung"
    seeds = [int(s) for s in traj["seeds"]]
    risks = [float(r) for r in traj["risk"][:, -1]]
    order = rank_by_validation(risks, "min")
    kept = survivors_after(len(seeds), cfg.prune_keep)
    return {
        "rung": cfg.prune_at,
        "keep": cfg.prune_keep,
        "seeds": seeds,
        "risk_at_rung": risks,
        "survivors": sorted(seeds[i] for i in order[:kept]),
    }


def halving_lines(
    cfg: StudyConfig, root: Path, ends: list[Endpoint], halving: dict[str, Any], traj: dict[str, Any]
) -> list[str]:
    """What successive halving cost and kept: the population's best-of-k at the rung (with its 90% band),
    the compute against training every initialization to the end, the survivors' check at the rung, and
    the noise floor of the winner's lead over the median survivor on the grid (the demo's test set)."""
    import numpy as np

    from lightning_landscape.multiseed.noise_floor import noise_floor

    pop = halving["risk_at_rung"]
    n_pop, n_surv, rung = len(pop), len(halving["survivors"]), halving["rung"]
    curve = best_of_k(pop, mode="min", confidence=0.9)
    band = "; ".join(
        f"k={k}: {curve.expected[k - 1]:.3g} [{_fmt(curve.expected_low, k)}, {_fmt(curve.expected_high, k)}]"
        for k in curve.table_ks()
    )
    spent = n_pop * rung + n_surv * cfg.steps
    # The survivors' own run repeats the rung's steps: their risk there against the population's.
    col = int(np.searchsorted(traj["steps"], rung))
    by_seed = dict(zip(halving["seeds"], pop, strict=True))
    again = [float(traj["risk"][i, col]) for i in range(len(traj["seeds"]))]
    drift = max(abs(a / by_seed[int(s)] - 1) for s, a in zip(traj["seeds"], again, strict=True))
    full = n_pop * cfg.steps
    lines = [
        f"Successive halving: all {n_pop} initializations trained to step {rung} ({rung / cfg.steps:.0%} of"
        f" the budget), the best {n_surv} by population risk there (seeds {halving['survivors']}) the full"
        f" {cfg.steps} steps: {spent:,} member-steps instead of {full:,} ({spent / full:.0%});"
        f" their risk at step {rung} in their own run matches the population's to {drift:.1e} (relative).",
        f"Best of k over all {n_pop} initializations at step {rung} (expected risk [90% band]): {band}.",
    ]
    if len(ends) >= 2:
        ranked = sorted(ends, key=lambda e: e.final_risk)
        winner, other = ranked[0], ranked[len(ranked) // 2]
        seeds, nets, _ = load_members(root, cfg)
        target = ShallowReLUDataModule(target=cfg.target, val_size=8).target  # type: ignore[arg-type]
        x, y = midpoint_grid(cfg.grid_size, target, torch.float64)
        with torch.no_grad():
            w, o = ((nets[seeds.index(e.seed)](x) - y).pow(2).reshape(-1).tolist() for e in (winner, other))
        floor = noise_floor(w, o, kind="loss")
        lines.append(
            f"Noise floor (seed {winner.seed} vs the median survivor, seed {other.seed}; per-point squared"
            f" error on the {cfg.grid_size}-point grid, the demo's test set, paired bootstrap):"
            f" {floor.verdict_line()}."
        )
    return lines


def _fmt(values: list[float | None] | None, k: int) -> str:
    value = None if values is None else values[k - 1]
    return "?" if value is None else f"{value:.3g}"


def write_curves(root: Path, traj: dict[str, Any]) -> None:
    g, d = rms(traj["grad_norm"]), rms(traj["distance"])
    with open(root / CURVES, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "rms_grad_norm", "rms_distance_to_limit"])
        for step, gv, dv in zip(traj["steps"].tolist(), g.tolist(), d.tolist(), strict=True):
            writer.writerow([step, gv, dv])


def write_best_of_k(root: Path, curve: BestOfK) -> None:
    with open(root / BEST_OF_K_CSV, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["k", "expected_best_risk", "q10", "q90"])
        for row in zip(curve.ks, curve.expected, curve.q_low, curve.q_high, strict=True):
            writer.writerow(row)


def risk_levels(risks: list[float], rtol: float) -> list[list[float]]:
    """Group sorted risks into levels: a new level starts above ``(1 + rtol)`` times the level's first."""
    levels: list[list[float]] = []
    for r in sorted(risks):
        if levels and r <= levels[-1][0] * (1 + rtol):
            levels[-1].append(r)
        else:
            levels.append([r])
    return levels


def measure_landscape(cfg: StudyConfig, root: Path, ends: list[Endpoint]) -> None:
    """The loss plane around the best end point along its top-2 Hessian eigenvectors (``plane_best.npz``)
    and, between the lowest end points pairwise (``barriers.csv``): the raw linear barrier, the barrier after
    aligning the second network's hidden units to the first's (weight matching with ReLU rescaling: the same
    function, see :func:`~lightning_landscape.landscape.align`) and the RMS distance between their outputs
    on the grid."""
    from lightning_landscape.landscape import (
        functional_distance,
        hessian_directions,
        linear_barrier,
        loss_plane,
    )

    seeds, nets, _ = load_members(root, cfg)
    by_seed = dict(zip(seeds, nets, strict=True))
    target = ShallowReLUDataModule(target=cfg.target, val_size=8).target  # type: ignore[arg-type]
    grid = midpoint_grid(cfg.grid_size, target, torch.float64)
    ranked = [e.seed for e in sorted(ends, key=lambda e: e.final_risk)]
    best = by_seed[ranked[0]]
    hd = hessian_directions(best, _mse, [grid], k=2)
    # Unit eigenvectors: at |alpha| = 2 / sqrt(lambda_1) the quadratic model has risen by 2 along d_1.
    half = 2.0 / math.sqrt(max(float(hd.eigenvalues[0]), 1e-12))
    plane = loss_plane(best, _mse, [grid], directions=hd.directions, span=(-half, half), steps=31)
    plane.meta.update({"seed": ranked[0], "eigenvalues": [float(v) for v in hd.eigenvalues]})
    plane.save(root / PLANE)
    chosen = ranked[:BARRIER_SEEDS]
    with open(root / BARRIERS, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seed_a", "seed_b", "barrier", "aligned_barrier", "output_rms"])
        for i, a in enumerate(chosen):
            for b in chosen[i + 1 :]:
                pair = (by_seed[a], by_seed[b], _mse, [grid])
                raw = linear_barrier(*pair, steps=25).barrier
                aligned = linear_barrier(*pair, steps=25, align="weights").barrier
                rms = functional_distance(by_seed[a], by_seed[b], [grid], kind="rms").value
                writer.writerow([a, b, raw, aligned, rms])


def read_barriers(root: Path, column: str = "barrier") -> tuple[list[int], Any]:
    """The seeds of ``barriers.csv`` (lowest risk first) and the symmetric matrix of one of its columns
    (``barrier``, ``aligned_barrier`` or ``output_rms``)."""
    import numpy as np

    rows = _read_rows(root / BARRIERS)
    seeds: list[int] = []
    for r in rows:
        for key in ("seed_a", "seed_b"):
            if int(r[key]) not in seeds:
                seeds.append(int(r[key]))
    matrix = np.zeros((len(seeds), len(seeds)))
    for r in rows:
        i, j = seeds.index(int(r["seed_a"])), seeds.index(int(r["seed_b"]))
        matrix[i, j] = matrix[j, i] = float(r[column])
    return seeds, matrix


def valley_line(root: Path, ends: list[Endpoint]) -> str:
    """One sentence worded from ``barriers.csv``: raw and aligned barriers, each aligned barrier against the
    larger end-point risk of its own pair, and the RMS distances between the networks' outputs."""
    import numpy as np

    rows = _read_rows(root / BARRIERS)
    risk = {e.seed: e.final_risk for e in ends}
    raw = np.array([float(r["barrier"]) for r in rows])
    aligned = np.array([float(r["aligned_barrier"]) for r in rows])
    rms = np.array([float(r["output_rms"]) for r in rows])
    ends_max = np.array([max(risk[int(r["seed_a"])], risk[int(r["seed_b"])]) for r in rows])
    share = 1 - float(np.clip(aligned, 0, None).sum()) / max(float(np.clip(raw, 0, None).sum()), 1e-300)
    seeds = {int(r[k]) for r in rows for k in ("seed_a", "seed_b")}
    line = (
        f"Between the {len(seeds)} lowest end points ({len(rows)} pairs): raw linear barriers median "
        f"{np.median(raw):.3g} (max {raw.max():.3g}); after aligning the hidden units (a permutation and "
        f"ReLU rescaling: the same function) median {np.median(aligned):.3g} (max {aligned.max():.3g}), so "
        f"{share:.0%} of the raw height is permutation symmetry; RMS distance between the networks' outputs "
        f"{rms.min():.2g}-{rms.max():.2g}."
    )
    above = int((aligned > ends_max).sum())
    if above == 0:
        return line + (
            " Every aligned barrier is below the larger end-point risk of its pair: as far as straight"
            " segments show, one basin up to symmetry."
        )
    ratio = float(np.median(aligned / np.maximum(ends_max, 1e-300)))
    return line + (
        f" {above}/{len(rows)} aligned barriers still exceed the larger end-point risk of their pair"
        f" (median aligned barrier / end-point risk {ratio:.3g}): even up to symmetry (as weight matching"
        " finds it) these end points are not linearly connected"
        + (", though most of the raw height is symmetry, not separate valleys." if share >= 0.5 else ".")
    )


def _read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- figures and report -------------------------------------------------------------------------------


def make_figures(
    cfg: StudyConfig, root: Path, ends: list[Endpoint], traj: dict[str, Any], curve: BestOfK
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    risks = np.array([e.final_risk for e in ends])
    best = float(risks.min())
    steps = traj["steps"]
    title = f"{len(ends)} inits, (1, {', '.join(map(str, cfg.hidden))}, 1), {cfg.steps} Adam steps"

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(root / name, dpi=110)
        plt.close(fig)

    # 1. the paper's left panel: relative frequency of the final risk levels
    fig, ax = plt.subplots(figsize=(6, 3.6))
    positive = risks[risks > 0]
    lo, hi = float(positive.min()), float(positive.max())
    bins = np.geomspace(lo / 1.1, hi * 1.1, 41) if hi > lo else 10
    ax.hist(
        positive,
        bins=bins,
        weights=np.full(len(positive), 1 / len(risks)),
        color="teal",
        edgecolor="darkgreen",
    )
    ax.set_xscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1))
    ax.set_xlabel("final risk level  R(θ_T)")
    ax.set_ylabel("relative frequency")
    ax.set_title(title, fontsize=9)
    save(fig, "final_risk_hist.png")

    later = steps > 0
    # 2. the paper's upper right panel: RMS over initializations of the full gradient norm
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.loglog(steps[later], rms(traj["grad_norm"])[later], color="teal")
    ax.set_xlabel("training steps")
    ax.set_ylabel("RMS of ‖∇R(θ_t)‖ over inits")
    ax.set_title("norm of the (full) gradient", fontsize=9)
    save(fig, "grad_norm.png")

    # 3. the paper's lower right panel: RMS distance to the limit point (the last iterate)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    last = steps < steps.max()
    ax.semilogx(steps[later & last], rms(traj["distance"])[later & last], color="teal")
    ax.set_xlabel("training steps")
    ax.set_ylabel("RMS of ‖θ_t - θ_T‖ over inits")
    ax.set_title("distance to the limit point", fontsize=9)
    save(fig, "distance_to_limit.png")

    # 4. risk gap to the best seed's final risk (and to the optimum 0 for the teacher), per init
    fig, ax = plt.subplots(figsize=(6, 3.6))
    order = np.argsort(risks)
    cmap = plt.get_cmap("viridis")
    for rank, k in enumerate(order):
        gap = traj["risk"][k] - (0.0 if cfg.target == "teacher" else best)
        keep = later & (gap > 0)
        ax.loglog(steps[keep], gap[keep], color=cmap(rank / max(1, len(order) - 1)), lw=0.6, alpha=0.7)
    ref = "0 (the optimal risk)" if cfg.target == "teacher" else "the best init's final risk"
    ax.set_xlabel("training steps")
    ax.set_ylabel(f"R(θ_t) - {ref}")
    ax.set_title("risk gap per init (colour: final-risk rank, dark = best)", fontsize=9)
    save(fig, "risk_gap.png")

    # 5. the Hessian's extreme eigenvalues at each end point
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    top = np.array([e.eig_max for e in ends])
    low = np.array([e.eig_min for e in ends])
    style = {"minimum": ("o", "tab:blue"), "saddle": ("x", "tab:orange"), "not critical yet": ("s", "grey")}
    for kind, (marker, colour) in style.items():
        sel = np.array([e.kind == kind for e in ends])
        if sel.any():
            axes[0].scatter(risks[sel], low[sel], marker=marker, color=colour, label=f"λ_min: {kind}")
    axes[0].scatter(risks, top, marker="^", color="tab:red", label="λ_max", s=12)
    finite = np.abs(np.concatenate([top, low]))
    finite = finite[np.isfinite(finite) & (finite > 0)]
    axes[0].set_yscale("symlog", linthresh=float(finite.min()) if finite.size else 1e-8)
    axes[0].set_xscale("log")
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].set_xlabel("final risk")
    axes[0].set_ylabel("Hessian eigenvalue at θ_T")
    axes[0].legend(fontsize=7)
    ratio = np.array([e.eig_ratio for e in ends])
    axes[1].scatter(risks, ratio, color="tab:purple", s=12)
    axes[1].set_yscale("symlog", linthresh=1e-6)
    axes[1].set_xscale("log")
    axes[1].axhline(0, color="k", lw=0.5)
    axes[1].set_xlabel("final risk")
    axes[1].set_ylabel("λ_min / λ_max")
    axes[1].set_title("how flat the flattest direction is", fontsize=9)
    save(fig, "hessian_eigs.png")

    # 6. best of k
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.fill_between(
        curve.ks, curve.q_low, curve.q_high, color="teal", alpha=0.25, label="10-90% of the best of k"
    )
    ax.plot(curve.ks, curve.expected, color="teal", marker=".", label="expected best of k")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("k initializations drawn at random")
    ax.set_ylabel("best final risk among k")
    ax.legend(fontsize=8)
    ax.set_title("what each extra retrain buys", fontsize=9)
    save(fig, "best_of_k.png")

    # 7. the plane around the best end point along its top-2 Hessian eigenvectors
    from lightning_landscape.landscape import PlaneResult

    plane = PlaneResult.load(root / PLANE)
    fig, ax = plt.subplots(figsize=(5, 4))
    a, b = plane.alphas.numpy(), plane.betas.numpy()
    z = np.log10(np.maximum(plane.losses.numpy().T, 1e-12))
    mesh = ax.contourf(a, b, z, levels=30, cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="log10 R")
    ax.plot([0], [0], "r*", ms=10)
    ev = plane.meta.get("eigenvalues", [math.nan, math.nan])
    ax.set_xlabel(f"along d1 (λ1 = {ev[0]:.3g})")
    ax.set_ylabel(f"along d2 (λ2 = {ev[1]:.3g})")
    ax.set_title(f"risk around the best end point (seed {plane.meta.get('seed')})", fontsize=9)
    save(fig, "plane_best.png")

    # 8. the barrier heatmaps between the lowest end points: raw and aligned, one colour scale
    seeds, matrix = read_barriers(root)
    _, aligned = read_barriers(root, "aligned_barrier")
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    vmax = max(float(matrix.max()), float(aligned.max()), 1e-12)
    for ax, values, title in ((axes[0], matrix, "raw"), (axes[1], aligned, "aligned (weight matching)")):
        im = ax.imshow(values, cmap="magma", vmin=min(0.0, float(aligned.min())), vmax=vmax)
        ax.set_xticks(range(len(seeds)), [str(s) for s in seeds])
        ax.set_yticks(range(len(seeds)), [str(s) for s in seeds])
        ax.set_xlabel("seed (lowest final risk first)")
        ax.set_title(f"{title} barriers between end points", fontsize=9)
    fig.colorbar(im, ax=axes[1], label="linear barrier (risk units, both panels)")
    save(fig, "barriers.png")


def answer_lines(
    cfg: StudyConfig,
    root: Path,
    ends: list[Endpoint],
    curve: BestOfK,
    args: argparse.Namespace,
    halving: dict[str, Any] | None = None,
) -> list[str]:
    risks = sorted(e.final_risk for e in ends)
    n = len(risks)
    best = risks[0]
    levels = risk_levels(risks, args.risk_rtol)
    top_levels = ", ".join(f"{lv[0]:.3g} ({len(lv)})" for lv in levels[:4])
    near = [e for e in ends if e.kind in ("minimum", "saddle")]
    minima = sum(e.kind == "minimum" for e in ends)
    saddles = sum(e.kind == "saddle" for e in ends)
    moving = sum(e.kind == "not critical yet" for e in ends)
    ratios = [e.eig_ratio for e in ends if math.isfinite(e.eig_ratio)]
    median_ratio = statistics.median(ratios) if ratios else math.nan
    rows = "; ".join(
        f"k={k}: {curve.expected[k - 1]:.3g} [{curve.q_low[k - 1]:.3g}, {curve.q_high[k - 1]:.3g}]"
        for k in curve.table_ks()
    )
    k5 = min(5, n)
    gain = 1 - curve.expected[k5 - 1] / curve.expected[0]
    who = f"{n} initializations" if halving is None else f"The {n} survivors (of {cfg.seeds})"
    among = "random initializations" if halving is None else f"of the {n} survivors at step {cfg.steps}"
    lines = [
        f"{who} of (1, {', '.join(map(str, cfg.hidden))}, 1), Adam, {cfg.steps} steps, "
        f"target {cfg.target}: {len(levels)} risk levels (within {args.risk_rtol:.0%}); "
        f"the lowest (count): {top_levels}.",
        f"{len(levels[0])}/{n} ended at the best level {best:.4g}; spread of the final risks: median "
        f"{statistics.median(risks):.4g}, max {risks[-1]:.4g} (max/min = {risks[-1] / best:.3g}).",
        f"Best of k {among} (expected final risk [10%, 90%]): {rows}.",
        f"Retraining {k5} times instead of once lowers the expected final risk by {gain:.0%}"
        + ("." if halving is None else " (among the survivors)."),
        f"End points: {len(near)}/{n} near-critical (||grad R|| <= {args.grad_tol:g}): {minima} minima, "
        f"{saddles} saddles (minimum: lambda_min >= -{args.eig_rtol:g}*|lambda_max|); "
        f"{moving} not critical yet; median lambda_min/lambda_max = {median_ratio:.2g}.",
    ]
    if (root / BARRIERS).is_file():
        lines.append(valley_line(root, ends))
    if cfg.target == "teacher":
        lines.append(f"The optimal risk is 0 (teacher target): the best init is {best:.3g} above it.")
    lines.append(f"Report: {root / 'report.md'}; logs: tensorboard --logdir {root}")
    return lines


def training_text(cfg: StudyConfig) -> str:
    """How the initializations were trained, for the report's header."""
    if not cfg.prune_at:
        return f"{cfg.steps} steps; {cfg.seeds} initializations"
    from lightning_landscape.multiseed.halving_simulation import survivors_after

    survivors = survivors_after(cfg.seeds, cfg.prune_keep)
    return (
        f"{cfg.seeds} initializations to step {cfg.prune_at} (successive halving), the best {survivors} "
        f"by population risk there to step {cfg.steps}"
    )


def write_report(
    cfg: StudyConfig,
    root: Path,
    ends: list[Endpoint],
    lines: list[str],
    args: argparse.Namespace,
    wall: dict[str, float],
) -> None:
    rows = [
        "| seed | final risk | gap to best | ‖∇R‖ | λ_max | λ_min | λ_min/λ_max | kind |",
        "|---:|---:|---:|---:|---:|---:|---:|:---|",
    ]
    for e in sorted(ends, key=lambda e: e.final_risk)[:20]:
        rows.append(
            f"| {e.seed} | {e.final_risk:.4g} | {e.gap_to_best:.3g} | {e.grad_norm:.2e} | {e.eig_max:.4g} | "
            f"{e.eig_min:.3g} | {e.eig_ratio:.2g} | {e.kind} |"
        )
    sched = f"0.01 · 0.5^⌊(i+1)/{cfg.lr_halve_every}⌋"
    text = f"""# Does one random initialization end in a good point? (arXiv 2212.13111, reproduced)

Network (1, {", ".join(map(str, cfg.hidden))}, 1), ReLU, He-normal weights, {cfg.bias_init} biases; target
{cfg.target} on X ~ U[0, 1]; Adam (0.9, 0.999, 1e-8) with learning rate {sched} at step i; a fresh batch
of {cfg.batch_size} samples per step (shared by all initializations); {training_text(cfg)}, as one
vectorized ensemble. Risk, gradient and Hessian are those of the population
risk R(θ) = ∫₀¹ (N_θ(x) - f(x))² dx by the {cfg.grid_size}-point midpoint rule. Wall time: training
{wall["train"]:.0f} s, end-point analysis {wall["analysis"]:.0f} s.

## Answer

{chr(10).join("- " + line for line in lines)}

## The paper's three panels

![final risks](final_risk_hist.png)

![gradient norm](grad_norm.png) ![distance to the limit point](distance_to_limit.png)

## What the paper did not have

![risk gap](risk_gap.png)

![Hessian eigenvalues](hessian_eigs.png)

![best of k](best_of_k.png)

The risk around the best end point along its top-2 Hessian eigenvectors, and the linear barriers
max_t R((1-t)θ_a + tθ_b) - ((1-t)R(θ_a) + tR(θ_b)) between the {min(BARRIER_SEEDS, len(ends))} lowest end
points, raw
(left) and after aligning θ_b's hidden units to θ_a's (right; a permutation and ReLU rescaling, so the same
function: a raw barrier alone cannot tell two valleys from two copies of one) (`{PLANE}`, `{BARRIERS}`,
which also holds the RMS distance between the networks' outputs):

![plane around the best end point](plane_best.png) ![barriers](barriers.png)

| | |
|---|---|
| one risk level | within (1 + {args.risk_rtol:g}) times its lowest member |
| near-critical | ‖∇R(θ_T)‖₂ ≤ {args.grad_tol:g} |
| minimum vs saddle (near-critical only) | λ_min ≥ -{args.eig_rtol:g} · \\|λ_max\\| |
| Lanczos tolerance | {args.hessian_tol:g} relative |

The 20 lowest end points:

{chr(10).join(rows)}

Data: `{TRAJECTORIES}`, `{FINAL_MEMBERS}`, `{ENDPOINTS}`, `{CURVES}`, `{BEST_OF_K_CSV}`; every number
above was read back from them.
"""
    (root / "report.md").write_text(text)


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> list[str]:
    """Run (or resume) the study, write the report, print the answer; returns the printed lines."""
    args = parse_args(argv)
    cfg = study_config(args)
    root = default_root(args)
    if args.fresh and root.exists():
        shutil.rmtree(root)
    stored = root / "study.json"
    if stored.is_file():
        previous = json.loads(stored.read_text())
        if previous != asdict(cfg):
            changed = sorted(k for k in asdict(cfg) if previous.get(k) != asdict(cfg)[k])
            raise SystemExit(
                f"study.py: error: {root} holds a study with other settings ({', '.join(changed)}); "
                "pass --fresh to start over or another --root_dir"
            )
    root.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps(asdict(cfg), indent=2))
    if args.quiet:
        _quiet_lightning()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    wall = {"train": 0.0, "analysis": 0.0}
    halving: dict[str, Any] | None = None
    if cfg.prune_at > 0:
        population = (root / f"{POPULATION}{TRAJECTORIES}", root / f"{POPULATION}{FINAL_MEMBERS}")
        if not all(p.is_file() for p in population):
            wall["train"] += train(
                cfg, root, args.quiet, args.accelerator, steps=cfg.prune_at, prefix=POPULATION
            )
        else:
            saved = torch.load(population[1], map_location="cpu", weights_only=True)
            wall["train"] += float(saved.get("wall_time", math.nan))
        halving = select_survivors(root, cfg)
        (root / HALVING_JSON).write_text(json.dumps(halving, indent=2))
    if not ((root / TRAJECTORIES).is_file() and (root / FINAL_MEMBERS).is_file()):
        survivors = None if halving is None else halving["survivors"]
        wall["train"] += train(cfg, root, args.quiet, args.accelerator, seeds=survivors)
    else:
        wall["train"] += load_members(root, cfg)[2]
    start = time.perf_counter()
    if (root / ENDPOINTS).is_file():
        ends = read_endpoints(root, args)
    else:
        write_endpoints(root, measure_endpoints(cfg, root, args))
        ends = read_endpoints(root, args)
    if not ((root / PLANE).is_file() and (root / BARRIERS).is_file()):
        measure_landscape(cfg, root, ends)
    traj = read_trajectories(root)
    write_curves(root, traj)
    curve = best_of_k([e.final_risk for e in ends], mode="min")
    write_best_of_k(root, curve)
    make_figures(cfg, root, ends, traj, curve)
    wall["analysis"] = time.perf_counter() - start
    lines = answer_lines(cfg, root, ends, curve, args, halving)
    if halving is not None:
        lines[-1:-1] = halving_lines(cfg, root, ends, halving, traj)
    lines.insert(
        -1, f"Wall time: training {wall['train']:.0f} s, end-point analysis {wall['analysis']:.0f} s."
    )
    write_report(cfg, root, ends, lines, args, wall)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
