"""Soup and ensemble vs the best end point on the demo (examples/study.py's run folder), no new training.

    python benchmarks/soups_demo.py runs/demo

The demo's risk is the population risk (the 4096-point midpoint grid of [0, 1]); it ranks the end points, and
it is also the quantity a soup or an ensemble should lower, so there is no separate test set here: the
greedy soup and the top-m choice see the number they are scored on (an upper bound on what selection on a
finite validation set would give). Soup members are aligned to the best end point first (weight matching
with ReLU rescaling: each member's function is unchanged).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import study
from shallow_relu import ShallowReLUDataModule

from lightning_landscape.landscape import align
from lightning_landscape.multiseed.soup import average_states


def main(root: Path) -> None:
    torch.set_num_threads(1)
    cfg = study.StudyConfig(**json.loads((root / "study.json").read_text()))
    seeds, nets, _ = study.load_members(root, cfg)
    target = ShallowReLUDataModule(target=cfg.target, val_size=8).target  # type: ignore[arg-type]
    x, y = study.midpoint_grid(cfg.grid_size, target, torch.float64)

    def risk(models: list[torch.nn.Module]) -> float:
        with torch.no_grad():
            return float((torch.stack([m(x) for m in models]).mean(0) - y).pow(2).mean())

    order = sorted(range(len(nets)), key=lambda i: risk([nets[i]]))
    ranked = [nets[i] for i in order]
    best = ranked[0]
    t0 = time.time()
    aligned = [best, *[align(best, m, "weights").model for m in ranked[1:]]]
    t_align = time.time() - t0

    def soup(members: list[torch.nn.Module]) -> torch.nn.Module:
        out = study.member_net(cfg.hidden, cfg.bias_init).to(torch.float64)
        out.load_state_dict(average_states([m.state_dict() for m in members]))
        return out

    chosen, score = [best], risk([best])
    for m in aligned[1:]:
        value = risk([soup([*chosen, m])])
        if value < score:
            chosen, score = [*chosen, m], value
    print(f"# {len(nets)} end points, grid {cfg.grid_size}; align {len(nets) - 1}: {t_align:.2f} s")
    print(f"best end point (seed {seeds[order[0]]}): risk {risk([best]):.4g}, 1 forward")
    print(f"uniform soup of all {len(nets)} (aligned): {risk([soup(aligned)]):.4g}, 1 forward")
    print(f"uniform soup of all {len(nets)} (raw, no alignment): {risk([soup(ranked)]):.4g}")
    print(f"greedy soup ({len(chosen)} members): {score:.4g}, 1 forward")
    for m in sorted({2, 4, 8, len(nets)} & set(range(2, len(nets) + 1))):
        print(f"ensemble of top {m}: {risk(ranked[:m]):.4g}, {m} forwards")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
