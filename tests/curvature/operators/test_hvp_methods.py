"""Three ways to take a Hessian-vector product (``hvp=``), each against the dense float64 oracle.

Ground truth: :func:`tests.oracle.dense_hessian` (plain autograd double backward, float64). Tolerances,
relative to the spectral norm :math:`\\|H\\|_2` of the case's dense Hessian:

* ``"double_backward"`` and ``"forward_over_reverse"``: exact to rounding, ``1e-9`` (float64);
* ``"finite_difference"``: a central difference of two gradients with :math:`h \\propto \\sqrt{\\epsilon}`
  (see :mod:`~lightning_landscape.curvature.operators._finite_difference`): ``FD_TOL`` below per dtype.
  Measured worst case over the zoo (printed by :func:`test_finite_difference_error_per_dtype`): float64
  about 1e-8 (all four cases); float32 about 2e-5 on the ReLU nets and the Transformer. The BatchNorm-ReLU
  CNN in float32 is left out there: its units sit near their kinks and the difference quotient is off by
  about 0.5 of :math:`\\|H\\|_2` whatever the step (measured: 1.75 at :math:`\\epsilon^{1/3}`, 0.49 at
  :math:`\\sqrt{\\epsilon}`); :func:`test_float32_finite_differences_across_relu_kinks` pins that down.

``"forward_over_reverse"`` cannot take every model: torch's forward-mode AD of ``F.mse_loss``'s backward
writes into an immutable zero tangent ("ZeroTensors are immutable", pytorch issue 123996), so on the
MSE cases it must fail with a message naming the way out, and ``"auto"`` must not pick it there.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch import Tensor, nn

from lightning_landscape.curvature import HessianOperator, hessian_eigenvalues
from tests.curvature.cases import CASE_NAMES, Case, case, dense_hessian

pytestmark = [
    pytest.mark.filterwarnings("ignore:enable_nested_tensor is True"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated"),  # torch.func's first call
]
# The Transformer's dense oracle takes tens of seconds on a loaded machine: its cases run as slow tests.
CASES = [pytest.param(n, marks=pytest.mark.slow) if n == "transformer" else n for n in CASE_NAMES]

METHODS = ("double_backward", "forward_over_reverse", "finite_difference", "auto")
EXACT_TOL = 1e-9
FD_TOL = {torch.float64: 1e-6, torch.float32: 1e-2}
MSE_CASES = ("relu_init", "relu_trained")  # forward-over-reverse breaks on F.mse_loss (pytorch 123996)
KINKED = "cnn_bn"  # float32 finite differences cross its ReLU kinks (see the module docstring)


@functools.cache
def _dense(name: str) -> Tensor:
    """The oracle's dense float64 Hessian of case ``name``, once per process (the Transformer's takes s)."""
    return dense_hessian(case(name))


def _relative_error(op: HessianOperator, H: Tensor, vectors: int = 4) -> float:
    """Worst ``||op v - H v|| / (||H||_2 ||v||)`` over random vectors."""
    gen = torch.Generator().manual_seed(3)
    scale = float(torch.linalg.matrix_norm(H, ord=2))
    worst = 0.0
    for _ in range(vectors):
        v = torch.randn(H.shape[0], generator=gen, dtype=torch.float64)
        got = op.matvec(v.to(op.dtype)).to(torch.float64)
        worst = max(worst, float((got - H @ v).norm()) / (scale * float(v.norm())))
    return worst


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("method", METHODS)
def test_products_equal_the_dense_oracle(name: str, method: str) -> None:
    if method == "forward_over_reverse" and name in MSE_CASES:
        pytest.skip("forward-over-reverse cannot differentiate F.mse_loss: tested below")
    c = case(name)
    H = _dense(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        op = HessianOperator(c.model, c.loss_fn, c.batches, hvp=method)
        err = _relative_error(op, H)
    # "auto" on a model double backward can take: no warning of ours.
    assert not [w for w in caught if "hvp" in str(w.message)]
    tol = FD_TOL[torch.float64] if method == "finite_difference" else EXACT_TOL
    assert err <= tol, f"{method} on {name}: relative error {err:.2e} > {tol:.0e}"
    assert op.num_products == 4
    if method == "auto":
        assert op.hvp == "double_backward"


@pytest.mark.parametrize("name", MSE_CASES)
def test_forward_over_reverse_through_mse_fails_naming_the_way_out(name: str) -> None:
    c = case(name)
    op = HessianOperator(c.model, c.loss_fn, c.batches, hvp="forward_over_reverse")
    with pytest.raises(RuntimeError, match=r"double_backward|finite_difference"):
        op.matvec(torch.ones(op.num_params, dtype=torch.float64))


@pytest.mark.parametrize("method", ["double_backward", "forward_over_reverse", "finite_difference"])
def test_eigenvalues_per_method_equal_dense(method: str) -> None:
    c = case("cnn_bn")
    truth = torch.linalg.eigvalsh(_dense("cnn_bn"))
    res = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=2, which="both", tol=1e-7, hvp=method)
    rtol = 1e-7 if method != "finite_difference" else 1e-5
    scale = float(truth.abs().max())
    torch.testing.assert_close(res.eigenvalues, truth.flip(0)[:2], rtol=0, atol=rtol * scale)
    assert res.smallest is not None
    torch.testing.assert_close(res.smallest, truth[:2], rtol=0, atol=rtol * scale)
    assert res.converged


def _float32(c: Case) -> Case:
    def cast(b: object) -> object:
        if isinstance(b, Tensor):
            return b.float() if b.is_floating_point() else b
        if isinstance(b, dict):
            return {k: cast(v) for k, v in b.items()}
        if isinstance(b, (tuple, list)):
            return type(b)(cast(v) for v in b)
        return b

    return Case(c.name, c.model.float(), c.loss_fn, [cast(b) for b in c.batches])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_finite_difference_error_per_dtype(dtype: torch.dtype, capsys: pytest.CaptureFixture[str]) -> None:
    worst = 0.0
    names = CASE_NAMES if dtype == torch.float64 else [n for n in CASE_NAMES if n != KINKED]
    for name in names:
        c = case(name) if dtype == torch.float64 else _float32(case(name))
        # float32: the float64 oracle at the float64 weights, 6e-8 relative from the float32 ones.
        op = HessianOperator(c.model, c.loss_fn, c.batches, hvp="finite_difference")
        worst = max(worst, _relative_error(op, _dense(name)))
    with capsys.disabled():
        print(f"\nfinite-difference products, {dtype}: worst relative error {worst:.2e}")
    assert worst <= FD_TOL[dtype]
    # Not exact either: a difference quotient that came out exact would mean the oracle was reused.
    assert worst > 0.0


def test_float32_finite_differences_across_relu_kinks() -> None:
    # The honest limit: a step that crosses ReLU kinks measures the gradient's jumps, not H.
    c = _float32(case(KINKED))
    op = HessianOperator(c.model, c.loss_fn, c.batches, hvp="finite_difference")
    assert _relative_error(op, _dense(KINKED)) > FD_TOL[torch.float32]
    exact = HessianOperator(c.model, c.loss_fn, c.batches, hvp="double_backward")
    assert _relative_error(exact, _dense(KINKED)) < 1e-5  # the float32 double backward has no such limit


class _CubeGrad(torch.autograd.Function):
    """``3 x^2 g``: the backward of :class:`_Cube`, itself without a backward (as CPU flash attention's)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor, x: Tensor) -> Tensor:
        return grad * 3 * x**2

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *grads: Tensor) -> tuple[Tensor, Tensor]:
        raise RuntimeError("derivative for cube_backward is not implemented")


class _Cube(torch.autograd.Function):
    """``x ** 3`` with a backward that has no derivative, and no forward-mode (functorch) rule."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return _CubeGrad.apply(grad, x)


class _CubeNet(nn.Module):
    def __init__(self, custom: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2).double()
        self.custom = custom

    def forward(self, x: Tensor) -> Tensor:
        h = self.lin(x)
        return _Cube.apply(h) if self.custom else h**3


def test_auto_falls_back_to_finite_differences_with_one_warning() -> None:
    torch.manual_seed(0)
    custom, plain = _CubeNet(custom=True), _CubeNet(custom=False)
    plain.load_state_dict(custom.state_dict())
    x = torch.randn(8, 3, dtype=torch.float64)

    def loss_fn(m: nn.Module, b: Tensor) -> Tensor:
        return m(b).mean()

    H = dense_hessian(Case("cube", plain, loss_fn, [x]))  # the same function, plain ops
    with pytest.warns(UserWarning, match="finite_difference") as record:
        op = HessianOperator(custom, loss_fn, [x], hvp="auto")
        err = _relative_error(op, H)
    assert len([w for w in record if "finite_difference" in str(w.message)]) == 1
    assert op.hvp == "finite_difference"
    assert err <= FD_TOL[torch.float64]


def test_finite_differences_leave_the_model_bit_identical() -> None:
    c = case("cnn_bn")
    before = {n: p.detach().clone() for n, p in c.model.named_parameters()}
    buffers = {n: b.clone() for n, b in c.model.named_buffers()}
    op = HessianOperator(c.model, c.loss_fn, c.batches, hvp="finite_difference")
    op.matvec(torch.ones(op.num_params, dtype=torch.float64))
    for n, p in c.model.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.grad is None
    for n, b in c.model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert c.model.training  # the case is built in train mode; the probe's eval mode is undone


def test_unknown_hvp_is_named() -> None:
    c = case("relu_init")
    with pytest.raises(ValueError, match=r"`hvp`.*'double_backward'"):
        HessianOperator(c.model, c.loss_fn, c.batches, hvp="jvp")  # type: ignore[arg-type]
