"""The CPU form of benchmarks/gpu_check.py (the GPU check the lead runs on a lent machine) never rots."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_on_cpu_and_writes_one_table(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ALL CHECKS PASSED" in proc.stdout
    table = json.loads(out.read_text())
    assert table["failed"] == []
    rows = {row["check"]: row for row in table["rows"]}
    for model in ("CNN", "Transformer"):
        assert rows[f"{model}: monitors' values finite"]["ok"] is True
        assert rows[f"{model}: monitors' values finite"]["value"] >= 3  # eigenvalues, gradient norm, risk gap
        assert rows[f"{model}: bit-identical with/without monitors"]["value"] == "yes"
        assert "HVPs" in rows[f"{model}: top-5 probe on cpu"]["note"]
    # float32 against float64 on the same probe: close, but not trivially equal (different arithmetic).
    err = rows["CNN: top-5 cpu float32 vs CPU float64"]["value"]
    assert 0 < err < 1e-3
    for k in (4, 8):
        ms = rows[f"SeedEnsemble K={k}: ms per step"]["value"]
        projected = rows[f"SeedEnsemble K={k}: projected 10000 steps"]["value"]
        assert math.isfinite(ms) and ms > 0
        assert projected == pytest.approx(
            ms * 10, rel=1e-3
        )  # 10,000 steps in seconds, no compile in the CPU form
    assert rows["MultiSeedTrainer: 4 seeds sequential"]["ok"] is True
    # The scale rows on a tiny GPT-2 (CPU: no peaks; the wall ratio and a converged top-1 value).
    assert rows["GPT-2 tiny: bf16-mixed step peak"]["value"] == "n/a"
    ratio = rows["GPT-2 tiny: top-1 wall / (HVPs x one HVP)"]["value"]
    assert math.isfinite(ratio) and ratio > 0.5
    top = rows["GPT-2 tiny: top-1 converged"]
    assert top["ok"] is True and math.isfinite(top["value"]) and top["value"] > 0
    # The same rows are printed as one table.
    assert proc.stdout.count("SeedEnsemble K=") == 4
