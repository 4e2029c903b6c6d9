"""Every monitor on Hugging Face GPT-2 and BERT (tests/callbacks/zoo_hf.py), through fused attention.

The zoo test (test_zoo.py) covers the top-2 and smallest eigenvalue and the gradient norms per parameter on
them; here, per model, one fit carries the per-layer Hessian blocks, the edge of stability, the gradient noise
scale, the risk, gradient norms per module and a landscape line along Hessian directions, and three more fits
the other landscapes (one LossLandscapeMonitor per fit: they share their tags). Every value read back from the
event files (or the landscape's ``.npz``) is compared with the dense float64 Hessian of :mod:`tests.oracle` at
the weights it was taken at, or with losses and gradients by plain autograd; every fit trains bit-identically
to a fit without monitors; no probe falls back from double backward (the math-kernel guard works) or is
skipped; the eager attention form logs the same values.

Tolerances: every eigenvalue, sharpness, curvature and noise estimate within rel 1e-6 of its oracle (measured:
within 7e-8 on both, the float32 of the event files), landscape losses within rel 1e-6, the landscape's
sharpness (a difference of two losses) within rel 1e-3: GPT-2's loss is float32 whatever the weights
(transformers' ``ForCausalLMLoss`` casts the logits with ``.float()``; measured 9e-6). Fits and oracles run on
one thread (``torch_threads``).
"""

from __future__ import annotations

import copy
import importlib.util
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn

from lightning_landscape import (
    EdgeOfStabilityMonitor,
    GradientNoiseScaleMonitor,
    GradientNormMonitor,
    HessianEigenMonitor,
    RiskGapMonitor,
)
from lightning_landscape.callbacks import tags
from lightning_landscape.callbacks.landscape import LossLandscapeMonitor
from lightning_landscape.curvature import hessian_eigenvalues
from lightning_landscape.curvature.operators import HvpMethod
from lightning_landscape.landscape import LineResult, PlaneResult
from tests._shared import torch_threads
from tests.callbacks._events import read_scalars
from tests.callbacks.test_stability import _adam_diag
from tests.callbacks.test_zoo import GradRecorder, _assert_same_training, _fit
from tests.callbacks.zoo import ZOO, Entry
from tests.callbacks.zoo_hf import TinyBert, TinyGPT2, hf_loss
from tests.oracle import dense_hessian

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="needs transformers (the test extra)"
)

STEPS = 4  # 4 batches of 4 sequences: one epoch; every probe is at the final weights
TOL = 1e-8
SPAN = 0.1
BLOCKS = {
    "hf_gpt2": ["model.transformer.h.0", "model.transformer.h.1"],
    "hf_bert": ["model.bert.encoder.layer.0", "model.bert.encoder.layer.1"],
}
REL = 1e-6  # measured: every value within 7e-8 of its oracle (the event files hold float32)
LANDSCAPES: dict[str, dict[str, Any]] = {
    "line_hessian": {"mode": "line", "directions": "hessian", "steps": 5},
    "line_random": {"mode": "line", "directions": "random", "steps": 5},
    "plane_random": {"mode": "plane", "directions": "random", "steps": 3},
    "plane_hessian": {"mode": "plane", "directions": "hessian", "steps": 3},
}
FitRun = tuple[Any, pl.Trainer, Tensor]


class NoiseRecorder(pl.Callback):
    """The noise scale's raw estimates by plain autograd: the gradients of the step's batch cut in 2 chunks,
    at the weights before the step (exact only without dropout: the monitor's chunks draw their own masks)."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.batch: Any = None
        self.raw: dict[int, tuple[float, float]] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.batch = batch if trainer.global_step % self.every == 0 else None

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        if self.batch is None:
            return
        params = [p for p in pl_module.parameters() if p.requires_grad]
        grads = []
        for half in (slice(0, 2), slice(2, 4)):
            chunk = {k: v[half] for k, v in self.batch.items()}
            grads.append(
                torch.cat([g.reshape(-1) for g in torch.autograd.grad(hf_loss(pl_module, chunk), params)])
            )
        small = sum(float(g @ g) for g in grads) / 2
        mean = (grads[0] + grads[1]) / 2
        big = float(mean @ mean)
        # McCandlish et al.'s unbiased estimators with B_small = 2, B_big = 4, written out.
        self.raw[trainer.global_step] = ((4 * big - 2 * small) / 2, (small - big) / (1 / 2 - 1 / 4))


@dataclass
class HFRuns:
    name: str
    entry: Entry
    bare: FitRun
    fits: dict[str, FitRun]
    monitors: dict[str, list[pl.Callback]]
    noise: NoiseRecorder
    grads: GradRecorder
    batch: Any
    caught: list[warnings.WarningMessage]
    first: dict[str, Tensor]  # the trainable parameters at the first weights (where directions are drawn)
    hessian: Tensor  # dense, at the final weights, on the probe batch
    hessian0: Tensor  # dense, at the first weights (where Hessian directions are drawn)

    def scalars(self, fit: str) -> dict[str, dict[int, float]]:
        logger = self.fits[fit][1].logger
        assert logger is not None and logger.log_dir is not None
        return read_scalars(logger.log_dir)

    def log_dir(self, fit: str) -> Path:
        return Path(self.fits[fit][1].log_dir)  # type: ignore[arg-type]


def _main_callbacks(name: str) -> list[pl.Callback]:
    return [
        HessianEigenMonitor(
            every_n_steps=STEPS, smallest=True, tol=TOL, train_mode=False, blocks=BLOCKS[name], name="layers"
        ),
        EdgeOfStabilityMonitor(every_n_steps=STEPS, tol=TOL, train_mode=False, batch_sharpness=True),
        GradientNoiseScaleMonitor(every_n_steps=2, num_chunks=2, log_raw=True),
        RiskGapMonitor("train_loss", None),
        GradientNormMonitor(),  # per module (the zoo test takes them per parameter)
        LossLandscapeMonitor(span=SPAN, **LANDSCAPES["line_hessian"]),
    ]


@pytest.fixture(scope="module", params=["hf_gpt2", "hf_bert"])
def hf(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HFRuns]:
    name: str = request.param
    entry = ZOO[name]
    root = tmp_path_factory.mktemp(name)
    with torch_threads(1):
        pl.seed_everything(0)
        first = entry.build()
        config: Any = first.model.config
        assert config._attn_implementation == "sdpa"  # the fused kernel, guarded in the probes
        batch = next(iter(entry.loader()))
        hessian0 = dense_hessian(first, hf_loss, [batch])
        monitors = {"main": _main_callbacks(name)}
        monitors.update(
            {k: [LossLandscapeMonitor(span=SPAN, **v)] for k, v in LANDSCAPES.items() if k != "line_hessian"}
        )
        noise, grads = NoiseRecorder(every=2), GradRecorder()
        fits = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for fit, callbacks in monitors.items():
                extra = [] if fit != "main" else [grads, noise] if name == "hf_bert" else [grads]
                fits[fit] = _fit(entry, [*callbacks, *extra], root / fit, STEPS)
        bare = _fit(entry, [], root / "bare", STEPS)
        hessian = dense_hessian(fits["main"][0], hf_loss, [batch])
        start = {n: p.detach().clone() for n, p in first.named_parameters() if p.requires_grad}
        yield HFRuns(name, entry, bare, fits, monitors, noise, grads, batch, caught, start, hessian, hessian0)


def _indices(model: nn.Module, prefix: str) -> Tensor:
    """Rows of the dense Hessian that belong to the parameters under ``prefix``."""
    rows: list[int] = []
    offset = 0
    for n, p in model.named_parameters():
        if p.requires_grad:
            if n.startswith(prefix + "."):
                rows.extend(range(offset, offset + p.numel()))
            offset += p.numel()
    return torch.tensor(rows)


def _loss_at(model: nn.Module, batch: Any, flat_shift: Tensor | None = None) -> float:
    """The eval-mode loss with every trainable parameter moved by its slice of ``flat_shift``."""
    moved = copy.deepcopy(model).eval()  # a deep copy keeps tied weights tied
    with torch.no_grad():
        if flat_shift is not None:
            offset = 0
            for p in moved.parameters():
                if p.requires_grad:
                    p.add_(flat_shift[offset : offset + p.numel()].view_as(p).to(p))
                    offset += p.numel()
        return float(hf_loss(moved, batch))


def test_training_is_bit_identical_with_and_without_every_monitor(hf: HFRuns) -> None:
    for fit in hf.fits.values():
        _assert_same_training(fit, hf.bare)


def test_second_order_work_takes_double_backward_through_the_math_kernel(hf: HFRuns) -> None:
    # No probe skipped, unconverged or fallen back from double backward (hvp="auto" warns when it does).
    messages = [str(w.message) for w in hf.caught]
    assert not [m for m in messages if "hvp=" in m or "skipp" in m or "converge" in m], messages
    assert not [w for w in hf.caught if issubclass(w.category, RuntimeWarning)]


def test_gradient_norms_per_module_add_up_to_the_total(hf: HFRuns) -> None:
    s = hf.scalars("main")
    total = s[tags.GRAD_NORM_TOTAL]
    assert total == {k: pytest.approx(v, rel=REL) for (k, _), v in hf.grads.norms.items()}
    modules = {t: v for t, v in s.items() if t.startswith("grad_norm/") and t != tags.GRAD_NORM_TOTAL}
    # Every module with parameters once; GPT-2's LM head shares the token embedding's weight: counted there.
    assert "grad_norm/model.lm_head" not in modules and len(modules) > 10
    for step, value in total.items():
        assert sum(series[step] ** 2 for series in modules.values()) ** 0.5 == pytest.approx(value, rel=REL)


def test_risk_is_the_mean_loss_over_the_training_batches(hf: HFRuns) -> None:
    model = hf.fits["main"][0]
    risk = sum(_loss_at(model, batch) for batch in hf.entry.loader()) / STEPS
    assert hf.scalars("main")[tags.RISK_TRAIN] == {3: pytest.approx(risk, rel=REL)}


def test_per_layer_hessian_blocks_equal_the_dense_blocks(hf: HFRuns) -> None:
    s, model, rel = hf.scalars("main"), hf.fits["main"][0], REL
    full = torch.linalg.eigvalsh(hf.hessian)
    scale = float(full.abs().max())
    assert s[tags.hessian_eig_tag(1, name="layers")] == {3: pytest.approx(float(full[-1]), rel=rel)}
    assert s[tags.hessian_tag(tags.EIG_MIN, name="layers")][3] == pytest.approx(float(full[0]), rel=rel)
    for block in BLOCKS[hf.name]:
        rows = _indices(model, block)
        assert 100 < len(rows) < hf.hessian.shape[0] / 2
        eig = torch.linalg.eigvalsh(hf.hessian[rows][:, rows])
        assert s[tags.hessian_eig_tag(1, name="layers", block=block)][3] == pytest.approx(
            float(eig[-1]), rel=rel, abs=1e-6 * scale
        )
        assert s[tags.hessian_tag(tags.EIG_MIN, name="layers", block=block)][3] == pytest.approx(
            float(eig[0]), rel=rel, abs=1e-6 * scale
        )
        assert s[tags.hessian_tag(tags.CONVERGED, name="layers", block=block)] == {3: 1.0}
        # A block is not the whole: the test tells a block's top eigenvalue from the full one.
        assert float(eig[-1]) < 0.9 * float(full[-1])


def test_edge_of_stability_equals_the_dense_preconditioned_sharpness(hf: HFRuns) -> None:
    s, rel = hf.scalars("main"), REL
    model, trainer, _ = hf.fits["main"]
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.AdamW)
    params = [p for p in model.parameters() if p.requires_grad]
    d = _adam_diag(optimizer, params).sqrt()
    sharpness = float(torch.linalg.eigvalsh(hf.hessian / d[:, None] / d[None, :])[-1])
    threshold = (2 + 2 * 0.9) / ((1 - 0.9) * 1e-2)
    assert s[tags.STABILITY_SHARPNESS] == {3: pytest.approx(sharpness, rel=rel)}
    assert s[tags.STABILITY_THRESHOLD][3] == pytest.approx(threshold, rel=1e-6)
    assert s[tags.STABILITY_RATIO][3] == pytest.approx(sharpness / threshold, rel=rel)
    assert s[tags.STABILITY_CONVERGED] == {3: 1.0}
    model.eval()
    try:
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(hf_loss(model, hf.batch), params)]).double()
    finally:
        model.train()
    assert s[tags.STABILITY_BATCH_SHARPNESS][3] == pytest.approx(float(g @ hf.hessian @ g / (g @ g)), rel=rel)


def test_gradient_noise_scale_equals_chunk_gradients_by_autograd(hf: HFRuns) -> None:
    s = hf.scalars("main")
    raw_sq = s[tags.noise_scale_tag(tags.GRAD_SQ, raw=True)]
    raw_trace = s[tags.noise_scale_tag(tags.TRACE_COV, raw=True)]
    assert sorted(raw_sq) == sorted(raw_trace) == [0, 2]
    if hf.name == "hf_gpt2":
        # Dropout in train mode: the chunks' masks are the monitor's own draws, so no exact oracle here; the
        # trace of a covariance is positive, and the logged averages are the debiased EMA of the raw values.
        assert all(v > 0 for v in raw_trace.values())
        ema = (0.9 * 0.1 * raw_trace[0] + 0.1 * raw_trace[2]) / (1 - 0.9**2)
        assert s[tags.noise_scale_tag(tags.TRACE_COV)][2] == pytest.approx(ema, rel=REL)
        return
    assert sorted(hf.noise.raw) == [0, 2]
    for step, (grad_sq, trace) in hf.noise.raw.items():
        assert raw_sq[step] == pytest.approx(grad_sq, rel=REL)
        assert raw_trace[step] == pytest.approx(trace, rel=REL)


@pytest.mark.parametrize("kind", list(LANDSCAPES))
def test_landscape_values_equal_losses_and_curvature_by_autograd(hf: HFRuns, kind: str) -> None:
    fit = "main" if kind == "line_hessian" else kind
    s, model, rel = hf.scalars(fit), hf.fits[fit][0], REL
    (monitor,) = [m for m in hf.monitors[fit] if isinstance(m, LossLandscapeMonitor)]
    assert monitor._directions is not None
    dirs = [d.double() for d in monitor._directions]
    if LANDSCAPES[kind]["directions"] == "hessian":
        # The top-2 eigenvectors of the Hessian at the first weights, unit norm (up to sign).
        vectors = torch.linalg.eigh(hf.hessian0).eigenvectors
        for d, v in zip(dirs, (vectors[:, -1], vectors[:, -2]), strict=True):
            assert float(d.norm()) == pytest.approx(1.0, rel=1e-6)
            assert abs(float(d @ v)) == pytest.approx(1.0, abs=1e-6)  # measured: 3e-7
    else:
        # Filter-normalized at the first weights: a filter is an output unit, a column of GPT-2's Conv1D.
        sizes = [p.numel() for p in hf.first.values()]
        direction = dict(zip(hf.first, torch.split(dirs[0], sizes), strict=True))
        for n, w in hf.first.items():
            if n.endswith("mlp.c_fc.weight") or n.endswith("intermediate.dense.weight"):
                axis = 0 if hf.name == "hf_gpt2" else 1  # Conv1D (in, out); nn.Linear (out, in)
                got = direction[n].view_as(w).norm(dim=axis)
                torch.testing.assert_close(got, w.double().norm(dim=axis), rtol=1e-12, atol=0)
    path = hf.log_dir(fit) / "landscape" / "epoch_0.npz"
    center = _loss_at(model, hf.batch)
    assert s[tags.LANDSCAPE_CENTER_LOSS] == {3: pytest.approx(center, rel=1e-6)}
    if LANDSCAPES[kind]["mode"] == "line":
        line = LineResult.load(path)
        truth = [_loss_at(model, hf.batch, float(a) * dirs[0]) for a in line.alphas]
        curvature = float(dirs[0] @ hf.hessian @ dirs[0])
        assert s[tags.LANDSCAPE_CURVATURE][3] == pytest.approx(curvature, rel=rel, abs=1e-7)
    else:
        plane = PlaneResult.load(path)
        truth = [
            _loss_at(model, hf.batch, float(a) * dirs[0] + float(b) * dirs[1])
            for a in plane.alphas
            for b in plane.betas
        ]
        line = plane  # type: ignore[assignment]
    assert line.losses.flatten().tolist() == pytest.approx(truth, rel=1e-6)
    assert s[tags.LANDSCAPE_SHARPNESS][3] == pytest.approx(max(truth) - center, rel=1e-3, abs=1e-6)


# Finite differences: the step is chosen for the parameters' float64 (sqrt(eps) ~ 1.5e-8), but GPT-2's
# loss is float32 (transformers' ForCausalLMLoss casts the logits with .float()), so the gradients' rounding
# divided by that step costs 1.7e-3 (measured; 9e-11 with a float64 cross-entropy on the same model).
# BERT's loss is float64 (measured 2e-11).
FD_REL = {"hf_gpt2": 5e-3, "hf_bert": 1e-9}


@pytest.mark.parametrize("hvp", ["double_backward", "forward_over_reverse", "finite_difference"])
@pytest.mark.usefixtures("one_thread")
def test_every_product_method_through_fused_attention(hf: HFRuns, hvp: HvpMethod) -> None:
    model = hf.fits["main"][0]
    result = hessian_eigenvalues(model, hf_loss, [hf.batch], k=1, tol=TOL, hvp=hvp)
    top = float(torch.linalg.eigvalsh(hf.hessian)[-1])
    rel = FD_REL[hf.name] if hvp == "finite_difference" else 1e-8  # measured: 2e-9 at most
    assert result.converged
    assert float(result.eigenvalues[0]) == pytest.approx(top, rel=rel)


@pytest.mark.parametrize("hf", ["hf_gpt2"], indirect=True)  # BERT's classifier head ties nothing
@pytest.mark.usefixtures("one_thread")
def test_the_tied_lm_head_selects_the_token_embedding(hf: HFRuns) -> None:
    model = hf.fits["main"][0]
    assert model.model.lm_head.weight is model.model.transformer.wte.weight
    result = hessian_eigenvalues(model, hf_loss, [hf.batch], k=1, tol=TOL, params=["model.lm_head"])
    rows = _indices(model, "model.transformer.wte")
    truth = float(torch.linalg.eigvalsh(hf.hessian[rows][:, rows])[-1])
    assert float(result.eigenvalues[0]) == pytest.approx(truth, rel=1e-8)


@pytest.mark.usefixtures("one_thread")
def test_eager_attention_logs_what_sdpa_logs(hf: HFRuns, tmp_path: Path) -> None:
    module = TinyGPT2 if hf.name == "hf_gpt2" else TinyBert
    eager = Entry(hf.name, lambda: module("eager"), hf.entry.loader, hf.entry.oracle_loss)
    model, trainer, _ = _fit(eager, _main_callbacks(hf.name), tmp_path, STEPS)
    config: Any = model.model.config
    assert config._attn_implementation == "eager"
    assert trainer.logger is not None and trainer.logger.log_dir is not None
    s, sdpa = read_scalars(trainer.logger.log_dir), hf.scalars("main")
    assert sorted(s) == sorted(sdpa)
    for tag, series in sdpa.items():
        # Measured: equal in the event files' float32 (the probes run both on the math kernel).
        assert s[tag] == pytest.approx(series, rel=REL, abs=1e-9), tag
