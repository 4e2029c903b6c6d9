"""The main job (``make demo``): does gradient descent from one random initialization end in a good point?

After the numerical experiments of arXiv 2212.13111: a shallow ReLU network ``(1, 20, 1)`` fitted to
:math:`x^2 + 2x` on :math:`[0, 1]` by Adam on fresh batches of 1024 samples per step (online SGD on the
population risk), from many random initializations, with all three callbacks of lightning-landscape
watching: :class:`GradientNormMonitor`, :class:`HessianEigenMonitor` and :class:`RiskGapMonitor`.
:class:`MultiSeedTrainer` runs the seeds; this script then reads *only* what they left on disk (the
TensorBoard event files through ``EventAccumulator``, ``summary.json`` and each seed's ``last.ckpt``) and
writes ``report.md`` with its figures into the run folder::

    python examples/study.py                      # 16 seeds, ~2-3 min on 2 CPU cores -> runs/demo/
    python examples/study.py --tiny --root_dir /tmp/demo   # seconds: the smoke test
    python examples/study.py --target teacher     # realizable target: the optimal risk is exactly 0
    tensorboard --logdir runs/demo

A rerun with the same arguments resumes (finished seeds are skipped) and rewrites the report.

**How a final point is classified.** The validation set is the midpoint grid of :math:`[0, 1]`, so
``val_loss`` is the population risk :math:`\\mathcal{R}(\\theta)` itself (midpoint rule). At the end of each
seed:

* *near-critical* if :math:`\\|\\nabla \\mathcal{R}(\\theta_T)\\|_2 \\le` ``grad_tol``, where the full
  gradient of the population risk is evaluated from ``last.ckpt`` (the logged ``grad_norm/total`` is the
  norm of the 1024-sample stochastic gradient, whose noise floor stays well above zero);
* *minimum* if the smallest Hessian eigenvalue (``hessian/eig_min``, from the monitor) satisfies
  :math:`\\lambda_{\\min} \\ge -` ``eig_rtol`` :math:`\\cdot |\\lambda_{\\max}|`, else *saddle*.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

# `python examples/study.py` puts examples/ (not the repository root) on sys.path.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from examples.shallow_relu import ShallowReLU, ShallowReLUDataModule  # noqa: E402

REPORT_FILES = (
    "report.md",
    "final_risk_hist.png",
    "grad_norm.png",
    "risk_gap.png",
    "hessian_eigs.png",
    "study.json",
)


@dataclass
class StudyConfig:
    """Everything that decides the numbers; kept in ``study.json`` so that a rerun resumes the same study."""

    seeds: int = 16
    steps: int = 1500
    target: str = "quadratic"
    hidden: list[int] = field(default_factory=lambda: [20])
    optimizer: str = "adam"
    lr: float = 0.01
    lr_halve_every: int = 500
    init: str = "he"
    batch_size: int = 1024
    val_size: int = 4096
    steps_per_epoch: int = 100
    log_every_n_steps: int = 10
    hessian_every_n_steps: int = 250
    executor: str = "sequential"


@dataclass
class SeedOutcome:
    seed: int
    final_risk: float
    best_risk: float
    grad_norm_sgd: float
    grad_norm_full: float
    eig_max: float
    eig_min: float
    near_critical: bool
    kind: str


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="The shallow ReLU multi-seed study (make demo).")
    p.add_argument("--root_dir", default="runs/demo", help="run folder (TensorBoard logs, report)")
    p.add_argument("--seeds", type=int, default=16, help="number of seeds (initializations)")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps per seed")
    p.add_argument("--target", default="quadratic", choices=("quadratic", "sin3", "x4sin", "teacher"))
    p.add_argument("--hidden", type=int, nargs="+", default=[20], help="hidden widths, e.g. 20 or 50 50")
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--lr_halve_every", type=int, default=500, help="0: constant learning rate")
    p.add_argument("--executor", default="sequential", choices=("sequential", "ray", "vectorized"))
    p.add_argument(
        "--risk_rtol", type=float, default=0.05, help="'as good as the best': risk <= best*(1+rtol)"
    )
    p.add_argument("--grad_tol", type=float, default=1e-3, help="near-critical: ||grad R|| <= grad_tol")
    p.add_argument("--eig_rtol", type=float, default=1e-3, help="minimum: eig_min >= -eig_rtol*|eig_max|")
    p.add_argument("--tiny", action="store_true", help="2 seeds, 40 steps, width 5: a smoke test in seconds")
    p.add_argument("--fresh", action="store_true", help="delete root_dir first instead of resuming")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the networks are tiny)")
    args = p.parse_args(argv)
    for name in ("seeds", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("risk_rtol", "grad_tol", "eig_rtol"):
        if not getattr(args, name) >= 0:
            p.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    return args


def study_config(args: argparse.Namespace) -> StudyConfig:
    if args.tiny:
        return StudyConfig(
            seeds=2,
            steps=40,
            target=args.target,
            hidden=[5],
            optimizer=args.optimizer,
            lr=args.lr,
            lr_halve_every=20,
            val_size=512,
            batch_size=256,
            steps_per_epoch=10,
            log_every_n_steps=5,
            hessian_every_n_steps=20,
            executor=args.executor,
        )
    return StudyConfig(
        seeds=args.seeds,
        steps=args.steps,
        target=args.target,
        hidden=list(args.hidden),
        optimizer=args.optimizer,
        lr=args.lr,
        lr_halve_every=args.lr_halve_every,
        hessian_every_n_steps=max(1, args.steps // 6),
        executor=args.executor,
    )


def run_seeds(cfg: StudyConfig, root: Path) -> Any:
    """Train every seed with the three callbacks (resuming what ``root`` already holds)."""
    from lightning_landscape.callbacks import GradientNormMonitor, HessianEigenMonitor, RiskGapMonitor
    from lightning_landscape.multiseed import MultiSeedTrainer

    optimal = 0.0 if cfg.target == "teacher" else None
    callbacks = [
        GradientNormMonitor(norm_type=2.0, granularity="module"),
        # dataloader="val": the probe is the midpoint grid, so this is the Hessian of the population risk.
        HessianEigenMonitor(k=1, smallest=True, every_n_steps=cfg.hessian_every_n_steps, dataloader="val"),
        RiskGapMonitor(train_key="train_loss", val_key="val_loss", optimal_risk=optimal, optimality_of="val"),
    ]
    trainer = MultiSeedTrainer(
        seeds=cfg.seeds,
        monitor="val_loss",
        mode="min",
        root_dir=root,
        executor=cfg.executor,  # type: ignore[arg-type]
        model_kwargs={
            "hidden": cfg.hidden,
            "init": cfg.init,
            "optimizer": cfg.optimizer,
            "lr": cfg.lr,
            "lr_halve_every": cfg.lr_halve_every,
        },
        max_steps=cfg.steps,
        log_every_n_steps=cfg.log_every_n_steps,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=callbacks,
    )
    datamodule = ShallowReLUDataModule(
        target=cfg.target,  # type: ignore[arg-type]
        batch_size=cfg.batch_size,
        steps_per_epoch=cfg.steps_per_epoch,
        val_size=cfg.val_size,
        seed=0,
    )
    return trainer.fit(ShallowReLU, datamodule=datamodule)


# --- reading back what the runs wrote -----------------------------------------------------------------


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of one TensorBoard log folder: ``{tag: [(step, value), ...]}``, by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out: dict[str, list[tuple[int, float]]] = {}
    for tag in acc.Tags().get("scalars", []):
        by_step = {e.step: float(e.value) for e in acc.Scalars(tag)}  # a resumed run may repeat steps
        out[tag] = sorted(by_step.items())
    return out


def full_gradient_norm(ckpt_path: str | Path, datamodule: ShallowReLUDataModule) -> float:
    """:math:`\\|\\nabla \\mathcal{R}(\\theta)\\|_2` at a checkpoint, on the validation grid, in float64."""
    model = ShallowReLU.load_from_checkpoint(str(ckpt_path), map_location="cpu", weights_only=True)
    net = model.net.to(torch.float64)
    x, y = datamodule.val_dataloader().dataset.tensors
    loss = torch.nn.functional.mse_loss(net(x.to(torch.float64)), y.to(torch.float64))
    grads = torch.autograd.grad(loss, list(net.parameters()))
    return float(torch.sqrt(sum((g**2).sum() for g in grads)))


def _last(series: list[tuple[int, float]] | None) -> float:
    return series[-1][1] if series else math.nan


def analyse(cfg: StudyConfig, root: Path, grad_tol: float, eig_rtol: float) -> tuple[list[SeedOutcome], dict]:
    from lightning_landscape.callbacks import _tags

    summary = json.loads((root / "summary.json").read_text())
    datamodule = ShallowReLUDataModule(
        target=cfg.target,  # type: ignore[arg-type]
        batch_size=cfg.batch_size,
        steps_per_epoch=cfg.steps_per_epoch,
        val_size=cfg.val_size,
    )
    outcomes: list[SeedOutcome] = []
    series: dict[int, dict[str, list[tuple[int, float]]]] = {}
    for run in summary["runs"]:
        if run["status"] != "finished":
            continue
        # Paths in summary.json are relative to the run folder.
        scalars = read_scalars(root / run["log_dir"])
        series[run["seed"]] = scalars
        eig_max = _last(scalars.get(_tags.hessian_eig_tag(1)))
        eig_min = _last(scalars.get(_tags.HESSIAN_EIG_MIN))
        last_ckpt = root / (run["last_model_path"] or Path(run["log_dir"]) / "checkpoints" / "last.ckpt")
        g_full = full_gradient_norm(last_ckpt, datamodule) if last_ckpt.is_file() else math.nan
        near = bool(g_full <= grad_tol)
        kind = "minimum" if eig_min >= -eig_rtol * abs(eig_max) else "saddle"
        if math.isnan(eig_min):
            kind = "unknown"
        outcomes.append(
            SeedOutcome(
                seed=run["seed"],
                final_risk=_last(scalars.get("val_loss")),
                best_risk=float(run["score"]),
                grad_norm_sgd=_last(scalars.get(_tags.GRAD_NORM_TOTAL)),
                grad_norm_full=g_full,
                eig_max=eig_max,
                eig_min=eig_min,
                near_critical=near,
                kind=kind,
            )
        )
    return outcomes, {"summary": summary, "series": series}


# --- figures and report -------------------------------------------------------------------------------


def _loglog_per_seed(
    ax: Any,
    series: dict[int, dict[str, list[tuple[int, float]]]],
    color: dict[int, Any],
    key: str,
    offset: float,
    lw: float,
    ylabel: str,
    title: str,
) -> None:
    """One line per seed of ``value - offset`` against the step, log-log (non-positive points dropped)."""
    for seed, s in series.items():
        pts = [(st, v - offset) for st, v in s.get(key, []) if st > 0 and v - offset > 0]
        if pts:
            ax.plot(*zip(*pts, strict=True), color=color.get(seed, "grey"), lw=lw, alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)


def make_figures(
    cfg: StudyConfig, root: Path, outcomes: list[SeedOutcome], series: dict, risk_rtol: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from lightning_landscape.callbacks import _tags

    risks = np.array([o.final_risk for o in outcomes])
    best = float(np.nanmin(risks))
    order = np.argsort(risks)
    cmap = plt.get_cmap("viridis")
    color = {
        o.seed: cmap(rank / max(1, len(outcomes) - 1)) for rank, o in enumerate(outcomes[i] for i in order)
    }

    # 1. histogram of the final risks (log-spaced bins)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    positive = risks[risks > 0]
    lo, hi = float(positive.min()), float(positive.max())
    bins = np.geomspace(lo / 1.2, hi * 1.2, 16) if hi > lo else 8
    ax.hist(positive, bins=bins, color="tab:blue", edgecolor="white")
    ax.set_xscale("log")
    ax.axvline(best, color="k", lw=1, label=f"best {best:.3g}")
    ax.axvspan(
        best, best * (1 + risk_rtol), color="tab:green", alpha=0.2, label=f"within {risk_rtol:.0%} of best"
    )
    ax.set_xlabel("final population risk  R(θ_T)")
    ax.set_ylabel("seeds")
    ax.set_title(f"{len(outcomes)} seeds, target {cfg.target}, widths {cfg.hidden}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(root / "final_risk_hist.png", dpi=110)
    plt.close(fig)

    # 2. stochastic gradient norm against steps, log-log
    fig, ax = plt.subplots(figsize=(6, 3.6))
    _loglog_per_seed(
        ax, series, color, _tags.GRAD_NORM_TOTAL, 0.0, lw=0.8,
        ylabel="‖∇ loss of the batch‖₂  (grad_norm/total)",
        title="gradient norm per seed (colour: final-risk rank, dark = best)",
    )  # fmt: skip
    fig.tight_layout()
    fig.savefig(root / "grad_norm.png", dpi=110)
    plt.close(fig)

    # 3. risk gap to the best seed (and to 0 for the teacher) against steps
    panels = 2 if cfg.target == "teacher" else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 3.6), squeeze=False)
    _loglog_per_seed(
        axes[0][0], series, color, "val_loss", best, lw=0.9,
        ylabel="R(θ_t) - min over seeds of R(θ_T)", title="risk gap to the best seed",
    )  # fmt: skip
    if panels == 2:
        _loglog_per_seed(
            axes[0][1], series, color, _tags.RISK_OPTIMALITY_GAP, 0.0, lw=0.9,
            ylabel="R(θ_t) - 0  (risk/optimality_gap)", title="gap to the optimal risk 0",
        )  # fmt: skip
    fig.tight_layout()
    fig.savefig(root / "risk_gap.png", dpi=110)
    plt.close(fig)

    # 4. Hessian eigenvalues at the end of each seed
    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = np.array([o.final_risk for o in outcomes])
    top = np.array([o.eig_max for o in outcomes])
    low = np.array([o.eig_min for o in outcomes])
    ax.scatter(x, top, marker="^", color="tab:red", label="largest eigenvalue")
    for o in outcomes:
        style = {
            "marker": "o",
            "facecolors": "tab:blue" if o.near_critical else "none",
            "edgecolors": "tab:blue",
        }
        if o.kind == "saddle":
            style = {"marker": "x", "color": "tab:orange"}
        ax.scatter([o.final_risk], [o.eig_min], **style)
    ax.scatter([], [], marker="o", color="tab:blue", label="smallest: minimum (filled: near-critical)")
    ax.scatter([], [], marker="x", color="tab:orange", label="smallest: saddle")
    finite = np.concatenate([np.abs(top[np.isfinite(top)]), np.abs(low[np.isfinite(low)])])
    linthresh = max(1e-8, float(np.min(finite[finite > 0])) if np.any(finite > 0) else 1e-8)
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.set_xscale("log")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("final population risk")
    ax.set_ylabel("Hessian eigenvalue at θ_T")
    ax.set_title("curvature at the end of each seed")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "hessian_eigs.png", dpi=110)
    plt.close(fig)


def answer_lines(
    cfg: StudyConfig, root: Path, outcomes: list[SeedOutcome], args: argparse.Namespace
) -> list[str]:
    risks = sorted(o.final_risk for o in outcomes)
    best = risks[0]
    good = sum(r <= best * (1 + args.risk_rtol) for r in risks)
    near = sum(o.near_critical for o in outcomes)
    minima = sum(o.kind == "minimum" for o in outcomes)
    saddles = sum(o.kind == "saddle" for o in outcomes)
    n = len(outcomes)
    lines = [
        f"{good}/{n} seeds ended within {args.risk_rtol:.0%} of the best final risk {best:.4g} "
        f"(target {cfg.target}, widths {cfg.hidden}, {cfg.optimizer}, {cfg.steps} steps).",
        f"Spread of the final risks: min {best:.4g}, median {risks[n // 2]:.4g}, max {risks[-1]:.4g} "
        f"(max/min = {risks[-1] / best:.3g}).",
        f"Final points: {near}/{n} near-critical (||grad R|| <= {args.grad_tol:g}); "
        f"{minima} minima, {saddles} saddles (eig_min >= -{args.eig_rtol:g}*|eig_max| counts as a minimum).",
    ]
    if cfg.target == "teacher":
        lines.append(f"The optimal risk is 0 (teacher target); the best seed is {best:.3g} above it.")
    lines.append(f"Report: {root / 'report.md'}; logs: tensorboard --logdir {root}")
    return lines


def write_report(
    cfg: StudyConfig,
    root: Path,
    outcomes: list[SeedOutcome],
    lines: list[str],
    args: argparse.Namespace,
    wall: float,
) -> None:
    best = min(o.final_risk for o in outcomes)
    rows = [
        "| seed | final risk | gap to best | ‖∇R‖ (full) | ‖∇‖ (batch, last log) | λ_max | λ_min "
        "| near-critical | kind |",
        "|---:|---:|---:|---:|---:|---:|---:|:---:|:---|",
    ]
    for o in sorted(outcomes, key=lambda o: o.final_risk):
        rows.append(
            f"| {o.seed} | {o.final_risk:.4g} | {o.final_risk - best:.3g} | {o.grad_norm_full:.2e} | "
            f"{o.grad_norm_sgd:.2e} | {o.eig_max:.4g} | {o.eig_min:.3g} | "
            f"{'yes' if o.near_critical else 'no'} | {o.kind} |"
        )
    text = f"""# Shallow ReLU study: does one random initialization end in a good critical point?

After the experiments of arXiv 2212.13111. Network (1, {", ".join(map(str, cfg.hidden))}, 1), ReLU, {
        cfg.init
    } init;
target {cfg.target} on X ~ U[0, 1]; {cfg.optimizer} with lr {cfg.lr}
{f"halved every {cfg.lr_halve_every} steps" if cfg.lr_halve_every else "constant"}; a fresh batch of
{cfg.batch_size} samples per step for {cfg.steps} steps; {cfg.seeds} seeds ({cfg.executor} executor).
The validation set is the {cfg.val_size}-point midpoint grid of [0, 1], so `val_loss` is the population risk
R(θ) = ∫₀¹ (N_θ(x) - f(x))² dx by the midpoint rule. Wall time of this invocation: {wall:.0f} s.

## Answer

{chr(10).join("- " + line for line in lines)}

## Final risks over seeds

![final risks](final_risk_hist.png)

## Gradient norm against steps

`grad_norm/total` logged by `GradientNormMonitor`: the norm of the gradient of the 1024-sample batch loss,
i.e. of a stochastic gradient. It flattens at the sampling-noise floor; whether the *population* gradient
vanishes is decided from the checkpoints (column ‖∇R‖ below).

![gradient norm](grad_norm.png)

## Risk gap against steps

`val_loss` (= population risk) minus the best final risk over all seeds{
        "; right: `risk/optimality_gap` from `RiskGapMonitor`, the gap to the optimal risk 0"
        if cfg.target == "teacher"
        else ""
    }.

![risk gap](risk_gap.png)

## Curvature at the end of each seed

`hessian/eig_1` (largest) and `hessian/eig_min` (smallest) from `HessianEigenMonitor` (Lanczos on
Hessian-vector products of the loss over the validation grid, i.e. of the population risk), at the last
probe of each seed.
A point is *near-critical* when the full gradient of the population risk at `last.ckpt` has norm
≤ {args.grad_tol:g}; it is a *minimum* when λ_min ≥ -{args.eig_rtol:g}·|λ_max| and a *saddle* otherwise.

![Hessian eigenvalues](hessian_eigs.png)

| | |
|---|---|
| tolerance "as good as the best" | final risk ≤ best · (1 + {args.risk_rtol:g}) |
| near-critical | ‖∇R(θ_T)‖₂ ≤ {args.grad_tol:g} |
| minimum vs saddle | λ_min ≥ -{args.eig_rtol:g} · \\|λ_max\\| |

{chr(10).join(rows)}

Every number above was read back from disk: TensorBoard event files (`EventAccumulator`),
`summary.json` and the seeds' `last.ckpt`. Browse them with `tensorboard --logdir {root}`.
"""
    (root / "report.md").write_text(text)


def main(argv: list[str] | None = None) -> list[str]:
    """Run (or resume) the study, write the report, print the answer; returns the printed lines."""
    args = parse_args(argv)
    cfg = study_config(args)
    root = Path(args.root_dir)
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

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    run_seeds(cfg, root)
    outcomes, data = analyse(cfg, root, args.grad_tol, args.eig_rtol)
    if not outcomes:
        raise SystemExit("study.py: error: no seed finished; see summary.json")
    make_figures(cfg, root, outcomes, data["series"], args.risk_rtol)
    lines = answer_lines(cfg, root, outcomes, args)
    write_report(cfg, root, outcomes, lines, args, time.perf_counter() - start)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
