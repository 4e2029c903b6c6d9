"""The main job at a tiny size: every panel's data file against independent recomputations; resume."""

from __future__ import annotations

import csv
import itertools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from examples import study
from examples.shallow_relu import population_risk, target_function
from lightning_landscape.multiseed.selection import classify_point
from tests.oracle import dense_eigenvalues

ROOT = Path(__file__).resolve().parents[1]


def _mse(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.mse_loss(net(batch[0]), batch[1])


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``--paper --tiny`` as ``make demo`` runs the script: a plain subprocess, from another directory."""
    root = tmp_path_factory.mktemp("study") / "run"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "study.py"),
            "--paper",
            "--tiny",
            "--quiet",
            "--root_dir",
            str(root),
        ],
        cwd=root.parent,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, proc.stdout


@pytest.mark.slow
def test_every_panel_has_its_data_file_with_numbers_that_check_out(tiny_run):
    root, out = tiny_run
    cfg = study.study_config(study.parse_args(["--paper", "--tiny"]))
    for name in study.REPORT_FILES:
        assert (root / name).is_file() and (root / name).stat().st_size > 0, name
    report = (root / "report.md").read_text()
    assert all(f"]({png})" in report for png in study.FIGURES)
    assert "Lightning" not in out and "Epoch" not in out  # --quiet: the answer only

    traj = study.read_trajectories(root)
    steps, seeds = traj["steps"], traj["seeds"].tolist()
    assert seeds == list(range(cfg.seeds))
    assert steps[0] == 0 and steps[-1] == cfg.steps and np.all(np.diff(steps) > 0)
    for name in ("risk", "grad_norm", "distance"):
        assert traj[name].shape == (cfg.seeds, len(steps)), name
    assert np.all(traj["distance"][:, -1] == 0)

    target = target_function(cfg.target)
    seeds_back, nets, _ = study.load_members(root, cfg)
    assert seeds_back == seeds
    x, y = study.midpoint_grid(cfg.grid_size, target, torch.float64)
    ends = {int(r["seed"]): r for r in _read_csv(root / study.ENDPOINTS)}
    for k, (seed, net) in enumerate(zip(seeds, nets, strict=True)):
        # Distance panel: the initial point rebuilt independently, as a single run with this seed builds it.
        pl.seed_everything(seed, verbose=False)
        start = study.member_net(cfg.hidden, cfg.bias_init)
        theta0 = torch.cat([p.detach().double().reshape(-1) for p in start.parameters()])
        theta_t = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        assert traj["distance"][k, 0] == pytest.approx(float((theta0 - theta_t).norm()), rel=1e-5)
        # Risk panel (float32 on the grid) and the end point (float64) against a 200k-point quadrature.
        exact = population_risk(net, target, num_points=200_000)
        assert traj["risk"][k, -1] == pytest.approx(exact, rel=1e-3)
        row = ends[seed]
        assert float(row["final_risk"]) == pytest.approx(exact, rel=1e-3)
        # Gradient panel: the full gradient of the grid risk at the last iterate.
        loss = nn.functional.mse_loss(net(x), y)
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(net.parameters()))]).norm()
        assert traj["grad_norm"][k, -1] == pytest.approx(float(g), rel=1e-3)
        assert float(row["grad_norm"]) == pytest.approx(float(g), rel=1e-9)
        # Hessian panel: Lanczos' extreme eigenvalues against the dense float64 Hessian.
        eigs = dense_eigenvalues(net, _mse, [(x, y)])
        top, low = float(eigs[-1]), float(eigs[0])
        assert float(row["eig_max"]) == pytest.approx(top, rel=1e-2)
        assert float(row["eig_min"]) == pytest.approx(low, abs=1e-2 * abs(top))
        assert row["kind"] == classify_point(float(row["grad_norm"]), low, top, grad_tol=1e-3, eig_rtol=1e-3)

    curves = _read_csv(root / study.CURVES)
    assert [int(r["step"]) for r in curves] == steps.tolist()
    rms_g = np.sqrt(np.mean(traj["grad_norm"] ** 2, axis=0))
    assert [float(r["rms_grad_norm"]) for r in curves] == pytest.approx(rms_g.tolist(), rel=1e-12)

    # Best of k against brute force over all k-subsets of the final risks.
    risks = [float(ends[s]["final_risk"]) for s in seeds]
    bok = {int(r["k"]): float(r["expected_best_risk"]) for r in _read_csv(root / study.BEST_OF_K_CSV)}
    assert sorted(bok) == list(range(1, cfg.seeds + 1))
    for k in (1, 2, 3):
        brute = [min(sub) for sub in itertools.combinations(risks, k)]
        assert bok[k] == pytest.approx(sum(brute) / len(brute), rel=1e-12)
    # Plane panel: its centre is the best end point; barrier panel: one segment recomputed point by point.
    from lightning_landscape.landscape import PlaneResult

    plane = PlaneResult.load(root / study.PLANE)
    best_seed = min(ends, key=lambda s: float(ends[s]["final_risk"]))
    assert plane.meta["seed"] == best_seed
    assert plane.center_loss == pytest.approx(float(ends[best_seed]["final_risk"]), rel=1e-9)
    rows = _read_csv(root / study.BARRIERS)
    assert len(rows) == len(risks) * (len(risks) - 1) // 2  # all pairs of the (here: all) lowest seeds
    row = rows[0]
    a, b = (nets[seeds.index(int(row[key]))] for key in ("seed_a", "seed_b"))
    pa, pb = (torch.cat([p.detach().reshape(-1) for p in n.parameters()]) for n in (a, b))
    probe = study.member_net(cfg.hidden, cfg.bias_init).double()
    gaps = []
    for t in torch.linspace(0, 1, 25, dtype=torch.float64).tolist():
        torch.nn.utils.vector_to_parameters((1 - t) * pa + t * pb, probe.parameters())
        with torch.no_grad():
            risk_t = float(nn.functional.mse_loss(probe(x), y))
        gaps.append(
            risk_t
            - (
                (1 - t) * float(ends[int(row["seed_a"])]["final_risk"])
                + t * float(ends[int(row["seed_b"])]["final_risk"])
            )
        )
    assert float(row["barrier"]) == pytest.approx(max(gaps), rel=1e-6, abs=1e-12)
    # Aligned barrier: the aligned copy computes b's function; its segment recomputed point by point.
    from lightning_landscape.landscape import align

    moved = align(a, b, "weights").model
    with torch.no_grad():
        torch.testing.assert_close(moved(x), b(x), rtol=0, atol=1e-10)
        rms = float((a(x) - b(x)).pow(2).mean().sqrt())
    assert float(row["output_rms"]) == pytest.approx(rms, rel=1e-9)
    pm = torch.cat([p.detach().reshape(-1) for p in moved.parameters()])
    aligned_gaps = []
    for t, gap in zip(torch.linspace(0, 1, 25, dtype=torch.float64).tolist(), gaps, strict=True):
        torch.nn.utils.vector_to_parameters((1 - t) * pa + t * pb, probe.parameters())
        with torch.no_grad():
            chord = float(nn.functional.mse_loss(probe(x), y)) - gap
        torch.nn.utils.vector_to_parameters((1 - t) * pa + t * pm, probe.parameters())
        with torch.no_grad():
            risk_t_of = float(nn.functional.mse_loss(probe(x), y))
        aligned_gaps.append(risk_t_of - chord)
    assert float(row["aligned_barrier"]) == pytest.approx(max(aligned_gaps), rel=1e-6, abs=1e-12)
    assert "raw linear barriers median" in out and "permutation symmetry" in out

    # The printed median is the statistical one (an even count: the mean of the middle two).
    assert f"median {statistics.median(risks):.4g}" in out
    assert "Best of k random initializations" in out and "k=1:" in out and f"k={cfg.seeds}:" in out
    assert "near-critical (||grad R|| <= 0.001)" in out


@pytest.mark.slow
def test_a_rerun_resumes_from_the_files_without_training(tiny_run):
    root, out = tiny_run
    stamp = (root / study.FINAL_MEMBERS).stat().st_mtime_ns
    (root / "report.md").unlink()
    again = study.main(["--paper", "--tiny", "--quiet", "--root_dir", str(root)])
    assert (root / "report.md").is_file()
    assert (root / study.FINAL_MEMBERS).stat().st_mtime_ns == stamp
    printed = [line for line in out.strip().splitlines() if not line.startswith("Wall time")]
    assert [line for line in again if not line.startswith("Wall time")] == printed


def test_the_authors_schedule_halves_on_their_steps_in_a_real_trainer(tmp_path):
    halve = study.AuthorsHalving(500)
    assert [halve(i) for i in (0, 498, 499, 998, 999)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    lrs = []
    for steps in (1, 2):
        ens = study.PaperEnsemble(
            lr_halve_every=3, model=study.member_net, model_kwargs={"hidden": [3], "bias_init": "zero"},
            seeds=2, optimizer="adam", lr=0.01,
        )  # fmt: skip
        trainer = pl.Trainer(
            max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
        )  # fmt: skip
        x = torch.rand(8 * steps, 1)
        trainer.fit(ens, train_dataloaders=DataLoader(TensorDataset(x, x**2), batch_size=8))
        lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        assert isinstance(trainer.optimizers[0], torch.optim.Adam)
        assert trainer.optimizers[0].defaults["betas"] == (0.9, 0.999)
        assert trainer.optimizers[0].defaults["eps"] == 1e-8
    # The lr for step index 1 is 0.01, for step index 2 (= (2 + 1) // 3 halvings) 0.005.
    assert lrs == pytest.approx([0.01, 0.005])


def test_paper_members_have_zero_biases_and_he_normal_weights():
    pl.seed_everything(0, verbose=False)
    net = study.member_net([2000], "zero")
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in net if isinstance(m, nn.Linear))
    assert float(net[0].weight.std()) == pytest.approx(2**0.5, rel=0.1)  # He: sqrt(2 / fan_in), fan_in 1
    assert float(net[2].weight.std()) == pytest.approx((2 / 2000) ** 0.5, rel=0.1)


def test_sizes_and_their_folders():
    paper = study.study_config(study.parse_args(["--paper"]))
    assert (paper.seeds, paper.steps, paper.hidden, paper.lr_halve_every, paper.batch_size) == (
        300, 10_000, [50, 50], 500, 1024,
    )  # fmt: skip
    demo = study.study_config(study.parse_args([]))
    assert demo.seeds >= 64 and demo.hidden == [50, 50] and demo.lr_halve_every * 20 == demo.steps
    assert study.default_root(study.parse_args(["--tiny"])) != study.default_root(study.parse_args([]))
    assert study.default_root(study.parse_args(["--paper", "--tiny"])) != study.default_root(
        study.parse_args(["--paper"])
    )


def test_help_says_the_paper_run_takes_tens_of_minutes_on_a_cpu(capsys):
    with pytest.raises(SystemExit):
        study.parse_args(["--help"])
    assert "tens of minutes on a CPU" in " ".join(capsys.readouterr().out.split())


def test_a_rerun_with_other_settings_is_refused(tmp_path):
    root = tmp_path / "demo"
    root.mkdir()
    cfg = study.study_config(study.parse_args(["--tiny"]))
    (root / "study.json").write_text(json.dumps({**study.asdict(cfg), "target": "sin3"}))
    with pytest.raises(SystemExit, match=r"other settings \(target\).*--fresh"):
        study.main(["--tiny", "--root_dir", str(root)])


def test_teacher_target_reports_the_gap_to_the_optimal_risk_zero(tmp_path):
    lines = study.main(
        [
            "--tiny",
            "--quiet",
            "--target",
            "teacher",
            "--seeds",
            "2",
            "--steps",
            "8",
            "--root_dir",
            str(tmp_path),
        ]
    )
    gap = [line for line in lines if "optimal risk is 0" in line]
    assert len(gap) == 1
    risks = [float(r["final_risk"]) for r in _read_csv(tmp_path / study.ENDPOINTS)]
    assert f"{min(risks):.3g} above it" in gap[0]


@pytest.mark.parametrize(
    "args",
    [["--seeds", "0"], ["--steps", "-1"], ["--risk_rtol", "-0.1"], ["--target", "cubic"], ["--hidden", "0"]],
)
def test_bad_study_arguments_exit_2_naming_the_option(args, capsys):
    with pytest.raises(SystemExit) as info:
        study.parse_args(args)
    assert info.value.code == 2
    assert args[0] in capsys.readouterr().err


@pytest.mark.slow
def test_the_demo_prunes_by_successive_halving(tmp_path):
    """``--tiny`` (the demo's preset, small): 6 inits to step 20, the best 2 to 60; the choice, the
    survivors' rerun and the noise floor against independent recomputations."""
    from lightning_landscape.multiseed.halving_simulation import survivors_after
    from lightning_landscape.multiseed.noise_floor import noise_floor

    root = tmp_path / "run"
    lines = study.main(["--tiny", "--quiet", "--root_dir", str(root)])
    cfg = study.study_config(study.parse_args(["--tiny"]))
    assert (cfg.prune_at, cfg.steps) == (20, 60)
    for name in study.HALVING_FILES:
        assert (root / name).is_file(), name
    target = target_function(cfg.target)
    # The rung: every init's population risk at step 20 from its saved weights, by a 200k-point quadrature.
    saved = torch.load(root / f"{study.POPULATION}{study.FINAL_MEMBERS}", weights_only=True)
    risks = []
    for k in range(len(saved["seeds"])):
        net = study.member_net(cfg.hidden, cfg.bias_init).double()
        net.load_state_dict({n: t[k].double() for n, t in saved["state"].items()})
        risks.append(population_risk(net, target, num_points=200_000))
    kept = survivors_after(cfg.seeds, cfg.prune_keep)
    expected = sorted(int(i) for i in np.argsort(risks, kind="stable")[:kept])
    halving = json.loads((root / study.HALVING_JSON).read_text())
    assert halving["survivors"] == expected and halving["rung"] == 20
    assert halving["risk_at_rung"] == pytest.approx(risks, rel=1e-3)
    # The survivors' own run: their seeds only, to the paper's end, through the rung with the same risks.
    traj = study.read_trajectories(root)
    assert traj["seeds"].tolist() == expected and traj["steps"][-1] == cfg.steps and 20 in traj["steps"]
    col = traj["steps"].tolist().index(20)
    assert traj["risk"][:, col] == pytest.approx([halving["risk_at_rung"][s] for s in expected], rel=1e-5)
    ends = {int(r["seed"]): float(r["final_risk"]) for r in _read_csv(root / study.ENDPOINTS)}
    assert sorted(ends) == expected
    # The noise floor of the winner against the median survivor, per grid point, recomputed.
    seeds, nets, _ = study.load_members(root, cfg)
    ranked = sorted(ends, key=ends.get)
    x, y = study.midpoint_grid(cfg.grid_size, target, torch.float64)
    with torch.no_grad():
        w, o = ((nets[seeds.index(s)](x) - y).pow(2).reshape(-1).tolist() for s in (ranked[0], ranked[1]))
    floor = noise_floor(w, o, kind="loss")
    text = "\n".join(lines)
    assert floor.verdict_line() in text
    assert f"Best of k over all {cfg.seeds} initializations at step 20" in text
    assert f"Best of k of the {kept} survivors at step {cfg.steps}" in text
    assert f"{cfg.seeds * 20 + kept * cfg.steps:,} member-steps instead of {cfg.seeds * cfg.steps:,}" in text


def test_paper_keeps_the_exact_set_up_without_pruning():
    paper = study.study_config(study.parse_args(["--paper"]))
    assert (paper.seeds, paper.steps, paper.lr_halve_every, paper.prune_at) == (300, 10_000, 500, 0)
    demo = study.study_config(study.parse_args([]))
    assert (demo.steps, demo.lr_halve_every, demo.prune_at, demo.prune_keep) == (10_000, 500, 1000, 1 / 16)
