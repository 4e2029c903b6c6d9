"""The main job at a tiny size: every report file, numbers that match an independent recomputation, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from examples import study
from examples.shallow_relu import ShallowReLU, ShallowReLUDataModule, population_risk
from lightning_landscape.callbacks import _tags

ROOT = Path(__file__).resolve().parents[1]


def _dense_hessian_eigs(ckpt: Path, dm: ShallowReLUDataModule) -> torch.Tensor:
    """Eigenvalues of the dense float64 Hessian of the validation-grid loss at a checkpoint."""
    model = ShallowReLU.load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=True)
    net = model.net.to(torch.float64)
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    x, y = (t.to(torch.float64) for t in dm.val_dataloader().dataset.tensors)

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            n = shape.numel()
            params[name] = theta[i : i + n].reshape(shape)
            i += n
        pred = torch.func.functional_call(net, params, (x,))
        return torch.nn.functional.mse_loss(pred, y)

    return torch.linalg.eigvalsh(torch.func.hessian(loss)(flat))


@pytest.mark.slow
def test_tiny_demo_writes_every_report_file_with_numbers_that_check_out(tmp_path):
    root = tmp_path / "demo"
    # As `make demo` runs it: a plain script, from another directory.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "study.py"), "--tiny", "--root_dir", str(root)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    lines = out.strip().splitlines()[-4:]

    for name in (*study.REPORT_FILES, "summary.json", "summary.csv", "seeds.png", "best.ckpt"):
        assert (root / name).is_file() and (root / name).stat().st_size > 0, name
    report = (root / "report.md").read_text()
    for png in (n for n in study.REPORT_FILES if n.endswith(".png")):
        assert f"]({png})" in report
    assert "seeds ended within 5% of the best final risk" in out
    assert "Spread of the final risks" in out
    assert f"tensorboard --logdir {root}" in out
    assert all(line in out for line in lines)

    cfg = study.study_config(study.parse_args(["--tiny"]))
    dm = ShallowReLUDataModule(
        target=cfg.target,
        batch_size=cfg.batch_size,
        steps_per_epoch=cfg.steps_per_epoch,
        val_size=cfg.val_size,
    )
    summary = json.loads((root / "summary.json").read_text())
    assert [r["seed"] for r in summary["runs"]] == list(range(cfg.seeds))
    final_risks = []
    for run in summary["runs"]:
        assert run["status"] == "finished"
        scalars = study.read_scalars(root / run["log_dir"])  # summary.json paths are relative to root
        # All three callbacks wrote their tags.
        assert {
            _tags.GRAD_NORM_TOTAL,
            _tags.hessian_eig_tag(1),
            _tags.HESSIAN_EIG_MIN,
            _tags.RISK_TRAIN,
        } <= set(scalars)
        ckpt = root / run["last_model_path"]
        model = ShallowReLU.load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=True)
        # The final val_loss in TensorBoard is the population risk (independent quadrature, 200k points).
        final = scalars["val_loss"][-1][1]
        final_risks.append(final)
        assert final == pytest.approx(population_risk(model.net, dm.target, num_points=200_000), rel=1e-3)
        # The monitor's last eigenvalues match the dense float64 Hessian at the same weights.
        eigs = _dense_hessian_eigs(ckpt, dm)
        top, low = float(eigs[-1]), float(eigs[0])
        assert scalars[_tags.hessian_eig_tag(1)][-1][1] == pytest.approx(top, rel=1e-2)
        assert scalars[_tags.HESSIAN_EIG_MIN][-1][1] == pytest.approx(low, abs=1e-2 * abs(top))
    best = min(final_risks)
    good = sum(r <= best * 1.05 for r in final_risks)
    assert f"{good}/{cfg.seeds} seeds ended within 5% of the best final risk {best:.4g}" in out

    # A rerun resumes: no seed trains again, the report is rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in root.glob("seed_*/checkpoints/last.ckpt")}
    (root / "report.md").unlink()
    again = study.main(["--tiny", "--root_dir", str(root)])
    assert again == lines
    assert (root / "report.md").is_file()
    assert {p: p.stat().st_mtime_ns for p in root.glob("seed_*/checkpoints/last.ckpt")} == stamps


def test_a_rerun_with_other_settings_is_refused(tmp_path):
    root = tmp_path / "demo"
    root.mkdir()
    cfg = study.study_config(study.parse_args(["--tiny"]))
    (root / "study.json").write_text(json.dumps({**study.asdict(cfg), "target": "sin3"}))
    with pytest.raises(SystemExit, match=r"other settings \(target\).*--fresh"):
        study.main(["--tiny", "--root_dir", str(root)])


@pytest.mark.parametrize(
    "args", [["--seeds", "0"], ["--steps", "-1"], ["--risk_rtol", "-0.1"], ["--target", "cubic"]]
)
def test_bad_study_arguments_exit_2_naming_the_option(args, capsys):
    with pytest.raises(SystemExit) as info:
        study.parse_args(args)
    assert info.value.code == 2
    assert args[0] in capsys.readouterr().err
