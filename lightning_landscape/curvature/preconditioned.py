r"""The curvature an optimizer sees: the preconditioned Hessian and the stability threshold of its update.

A preconditioned method steps :math:`\theta \leftarrow \theta - \eta P^{-1} m` with a diagonal
:math:`P = \mathrm{diag}(d)`; on a quadratic it is stable while the top eigenvalue of :math:`P^{-1} H` stays
below the threshold of its momentum scheme (Cohen et al. 2021, "Gradient descent on neural networks typically
occurs at the edge of stability"; Cohen et al. 2022, "Adaptive gradient methods at the edge of stability").
:math:`P^{-1} H` is not symmetric, but it is similar to

.. math::

    D^{-1/2} H D^{-1/2}, \qquad D = \mathrm{diag}(d),

which is, and has the same eigenvalues: :class:`PreconditionedOperator` is that symmetric form, so every
solver of the package (:func:`~.algorithms.lanczos.lanczos`, ...) runs on it unchanged.

* :func:`adam_preconditioner`: :math:`d` read from the state of ``Adam``/``AdamW``/``RMSprop``;
* :func:`stability_threshold`: the largest stable (preconditioned) sharpness of the optimizer's update at its
  current learning rate, with what it assumed in words.

Pure PyTorch, no Lightning import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.optim import SGD, Adam, AdamW, Optimizer, RMSprop

from lightning_landscape.curvature._checks import check_int

if TYPE_CHECKING:
    from lightning_landscape.curvature import LinearOperator

_SUPPORTED_PRECONDITIONED = ("Adam", "AdamW", "RMSprop")
_SUPPORTED_THRESHOLD = ("SGD", "Adam", "AdamW", "RMSprop")


class PreconditionedOperator:
    r"""The symmetric form :math:`D^{-1/2} H D^{-1/2}` of :math:`P^{-1} H`, for :math:`P = \mathrm{diag}(d)`.

    Both have the same eigenvalues (they are similar: :math:`P^{-1} H = D^{-1/2} (D^{-1/2} H D^{-1/2})
    D^{1/2}`), so the top eigenvalue of this operator is the preconditioned sharpness
    :math:`\lambda_1(P^{-1} H)`. An eigenvector :math:`u` of this operator gives the eigenvector
    :math:`D^{-1/2} u` of :math:`P^{-1} H`. Each :meth:`matvec` costs one product of ``operator``.

    Args:
        operator: a symmetric operator :math:`H` (a :class:`~.operators.hessian.HessianOperator`, a
            :class:`~.operators.base.DenseOperator`, ...).
        diag: the diagonal :math:`d` of the preconditioner, a flat tensor of ``operator.num_params`` finite
            entries > 0 in the operator's order (e.g. :func:`adam_preconditioner` of ``operator.params``).

    Raises:
        TypeError: if ``diag`` is not a tensor.
        ValueError: if ``diag`` does not have ``operator.num_params`` entries or one is not finite and > 0.

    Example:
        >>> from lightning_landscape.curvature import DenseOperator, lanczos
        >>> H = DenseOperator(torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64)))
        >>> op = PreconditionedOperator(H, torch.tensor([4.0, 0.25], dtype=torch.float64))
        >>> op.matvec(torch.ones(2, dtype=torch.float64)).tolist()  # diag(4 / 4, 1 / 0.25)
        [1.0, 4.0]
        >>> round(float(lanczos(op, k=1, tol=1e-10).eigenvalues[0]), 8)
        4.0
    """

    def __init__(self, operator: LinearOperator, diag: Tensor) -> None:
        if not isinstance(diag, Tensor):
            raise TypeError(f"`diag` must be a tensor, got {type(diag).__name__}.")
        if diag.numel() != operator.num_params:
            raise ValueError(
                f"`diag` must have the operator's num_params={operator.num_params} entries, "
                f"got {diag.numel()}."
            )
        flat = diag.detach().reshape(-1)
        if not bool(torch.isfinite(flat).all()) or not bool((flat > 0).all()):
            raise ValueError(
                "`diag` must hold finite entries > 0 (a positive definite diagonal preconditioner)."
            )
        self.operator = operator
        self.num_params: int = operator.num_params
        self.dtype: torch.dtype = operator.dtype
        self.device: torch.device = operator.device
        self.diag = flat.to(device=self.device, dtype=self.dtype)
        self._scale = self.diag.rsqrt()

    @property
    def num_products(self) -> int:
        """The products the wrapped operator has computed (``0`` if it does not count them)."""
        return int(getattr(self.operator, "num_products", 0))

    def matvec(self, v: Tensor) -> Tensor:
        """:math:`D^{-1/2} H D^{-1/2} v` for a flat ``v`` of ``num_params`` entries."""
        v = v.to(device=self.device, dtype=self.dtype)
        return self._scale * self.operator.matvec(self._scale * v)

    def matmat(self, V: Tensor) -> Tensor:
        """:math:`D^{-1/2} H D^{-1/2} V` for the columns of ``V`` (``[num_params, j]``), in one block."""
        V = V.to(device=self.device, dtype=self.dtype)
        s = self._scale[:, None]
        matmat = getattr(self.operator, "matmat", None)
        if matmat is not None:
            return s * matmat(s * V)
        return s * torch.stack([self.operator.matvec(c) for c in (s * V).unbind(1)], dim=1)


def _unwrap(optimizer: object) -> Optimizer:
    # Lightning hands out ``LightningOptimizer`` wrappers; the state lives on the wrapped optimizer.
    inner = getattr(optimizer, "optimizer", None)
    if not isinstance(optimizer, Optimizer) and isinstance(inner, Optimizer):
        return inner
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"`optimizer` must be a torch.optim.Optimizer, got {type(optimizer).__name__}.")
    return optimizer


def _kind(optimizer: Optimizer, supported: tuple[str, ...]) -> str:
    # Exact classes (AdamW before Adam: in some torch versions it subclasses Adam). A subclass of a supported
    # optimizer may change the update, so it is refused rather than guessed.
    for cls in (AdamW, Adam, RMSprop, SGD):
        if type(optimizer) is cls and cls.__name__ in supported:
            return cls.__name__
    raise ValueError(
        f"`optimizer` {type(optimizer).__name__} is not supported: valid {supported} "
        "(torch.optim, exact class)."
    )


def _group_of(optimizer: Optimizer) -> dict[int, dict[str, Any]]:
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


def adam_preconditioner(optimizer: Optimizer, params: Sequence[Tensor]) -> Tensor:
    r"""The diagonal :math:`d` of the preconditioner of the last update of Adam, AdamW or RMSprop, flat.

    Read from the optimizer's state after its step :math:`t` (``state["step"]``), so that the update it just
    made was exactly :math:`\theta_t = \theta_{t-1} - \eta\, m_t / d` (``torch/optim/adam.py``,
    ``rmsprop.py``):

    * Adam, AdamW: :math:`d = (1 - \beta_1^t)\,\big(\sqrt{v_t / (1 - \beta_2^t)} + \epsilon\big)`, with
      :math:`v_t` = ``exp_avg_sq`` (``max_exp_avg_sq`` with ``amsgrad``) and :math:`m_t` = ``exp_avg`` (the
      un-corrected first moment; the factor :math:`1 - \beta_1^t` is Adam's first-moment bias correction,
      moved into :math:`P` as Cohen et al. 2022 do; it tends to 1);
    * RMSprop: :math:`d = \sqrt{v_t} + \epsilon` (``square_avg``; centered:
      :math:`\sqrt{v_t - \bar g_t^2} + \epsilon`), no bias correction, as the optimizer itself.

    Decoupled (AdamW) or L2 weight decay does not change :math:`d`.

    Args:
        optimizer: a ``torch.optim.Adam``, ``AdamW`` or ``RMSprop`` that has stepped at least once on
            ``params``.
        params: the parameters, in the order of the flat vectors (e.g. ``HessianOperator.params``).

    Returns:
        A flat float tensor of ``sum(p.numel())`` entries > 0 (dtype and device of the state).

    Raises:
        TypeError: if ``optimizer`` is not an optimizer.
        ValueError: for another optimizer (named), an empty ``params``, a parameter the optimizer does not
            hold or one it has not stepped yet.

    Example:
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = torch.optim.Adam([w], lr=0.1, eps=1e-8)
        >>> w.grad = torch.tensor([2.0, -1.0, 0.5]); opt.step()
        >>> adam_preconditioner(opt, [w])  # (1 - 0.9) * (|g| + eps) after one step
        tensor([0.2000, 0.1000, 0.0500])
    """
    opt = _unwrap(optimizer)
    kind = _kind(opt, _SUPPORTED_PRECONDITIONED)
    params = list(params)
    if not params:
        raise ValueError("`params` is empty: pass the parameters of the operator (e.g. `op.params`).")
    groups = _group_of(opt)
    pieces: list[Tensor] = []
    for i, p in enumerate(params):
        group = groups.get(id(p))
        if group is None:
            raise ValueError(f"`params`[{i}] (shape {list(p.shape)}) is not a parameter of the optimizer.")
        state = opt.state.get(p, {})
        if "step" not in state:
            raise ValueError(
                f"`params`[{i}] (shape {list(p.shape)}) has no {kind} state yet: probe after the first "
                "optimizer step."
            )
        step = float(state["step"])
        eps = float(group["eps"])
        with torch.no_grad():
            if kind == "RMSprop":
                v = state["square_avg"]
                if group.get("centered", False):
                    v = v - state["grad_avg"] * state["grad_avg"]
                d = v.sqrt() + eps
            else:
                beta1, beta2 = (float(b) for b in group["betas"])
                v = state["max_exp_avg_sq"] if group.get("amsgrad", False) else state["exp_avg_sq"]
                d = (1.0 - beta1**step) * (v.sqrt() / (1.0 - beta2**step) ** 0.5 + eps)
        gather = getattr(d, "full_tensor", None)  # FSDP2: the state is sharded like its parameter
        pieces.append((gather() if gather is not None else d).reshape(-1))
    return torch.cat(pieces)


def stability_threshold(optimizer: Optimizer, group: int = 0) -> tuple[float, str]:
    r"""The largest stable (preconditioned) sharpness of the optimizer's update, at its current learning rate.

    On a quadratic with curvature :math:`\lambda` along an eigenvector (of :math:`H`, or of
    :math:`P^{-1} H` for the adaptive methods, with :math:`P` frozen), the update converges iff
    :math:`\lambda` is below (Cohen et al. 2021, Sec. 2 and App. for momentum; Cohen et al. 2022, Sec. 2):

    * SGD: :math:`2/\eta`; heavy-ball momentum :math:`\beta` (torch's ``buf = beta buf + (1 - tau) g``,
      dampening :math:`\tau`): :math:`(2 + 2\beta) / ((1 - \tau)\eta)`;
    * SGD, ``nesterov=True`` (torch's form ``theta -= eta (g + beta buf)``): :math:`(2 + 2\beta) / ((1 +
      2\beta)\eta)`, the root :math:`z = -1` of its characteristic polynomial
      :math:`z^2 - (1 + \beta)(1 - \eta\lambda) z + \beta(1 - \eta\lambda)` of the update on a quadratic
      (derived here from torch's update rule, not taken from a paper; the tests check it against torch's own
      SGD, which stays bounded 2 % below it and diverges 2 % above);
    * Adam, AdamW: :math:`(2 + 2\beta_1) / ((1 - \beta_1)\eta)` on :math:`P^{-1} H` with :math:`P` of
      :func:`adam_preconditioner` (38/eta at :math:`\beta_1 = 0.9`): Adam is heavy-ball momentum on the
      exponential average :math:`m_t`, i.e. learning rate :math:`(1 - \beta_1)\eta`;
    * RMSprop: :math:`2/\eta` on :math:`P^{-1} H` (:math:`\beta_1 = 0`); with ``momentum`` :math:`\beta`
      (torch's heavy-ball buffer ``buf = beta buf + g / d``): :math:`(2 + 2\beta)/\eta`.

    :math:`\eta` is read from ``optimizer.param_groups[group]["lr"]`` at the call, so schedulers are
    followed; with several groups of different learning rates, pass the group whose parameters the sharpness
    is taken over. Weight decay (L2 in the gradient) adds ``weight_decay`` to the curvature of the loss and is
    not part of the threshold; AdamW's decoupled decay does not enter it either.

    Args:
        optimizer: a ``torch.optim.SGD``, ``Adam``, ``AdamW`` or ``RMSprop``.
        group: index of the parameter group whose ``lr`` and momentum are used.

    Returns:
        ``(threshold, description)``: the threshold (1/units of the learning rate) and one line saying which
        formula and values gave it, e.g. ``'SGD heavy-ball momentum 0.9: (2 + 2 beta) / lr, lr=0.1'``.

    Raises:
        TypeError: if ``optimizer`` is not an optimizer.
        ValueError: for another optimizer (named), a ``group`` out of range, or a learning rate that is not
            a number > 0.

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> stability_threshold(torch.optim.SGD([w], lr=0.1))
        (20.0, 'SGD: 2 / lr, lr=0.1')
        >>> round(stability_threshold(torch.optim.Adam([w], lr=0.01))[0], 6)
        3800.0
    """
    opt = _unwrap(optimizer)
    kind = _kind(opt, _SUPPORTED_THRESHOLD)
    check_int("group", group, minimum=0)
    if group >= len(opt.param_groups):
        raise ValueError(
            f"`group` must be a parameter group index in 0..{len(opt.param_groups) - 1}, got {group}."
        )
    g = opt.param_groups[group]
    lr_value = g["lr"]
    lr = float(lr_value.item() if isinstance(lr_value, Tensor) else lr_value)
    if not lr > 0:
        raise ValueError(f"the learning rate of group {group} must be > 0 for a threshold, got {lr!r}.")
    if kind == "SGD":
        beta = float(g.get("momentum", 0.0))
        if beta == 0.0:
            return 2.0 / lr, f"SGD: 2 / lr, lr={lr:g}"
        if g.get("nesterov", False):
            value = (2.0 + 2.0 * beta) / ((1.0 + 2.0 * beta) * lr)
            return value, f"SGD Nesterov momentum {beta:g}: (2 + 2 beta) / ((1 + 2 beta) lr), lr={lr:g}"
        tau = float(g.get("dampening", 0.0))
        if tau >= 1.0:
            raise ValueError(f"SGD dampening of group {group} must be < 1 for a threshold, got {tau!r}.")
        if tau == 0.0:
            return (2.0 + 2.0 * beta) / lr, f"SGD heavy-ball momentum {beta:g}: (2 + 2 beta) / lr, lr={lr:g}"
        value = (2.0 + 2.0 * beta) / ((1.0 - tau) * lr)
        return value, (
            f"SGD heavy-ball momentum {beta:g}, dampening {tau:g}: "
            f"(2 + 2 beta) / ((1 - dampening) lr), lr={lr:g}"
        )
    if kind == "RMSprop":
        beta = float(g.get("momentum", 0.0))
        if beta == 0.0:
            return 2.0 / lr, f"RMSprop: 2 / lr on P^-1 H, lr={lr:g}"
        return (2.0 + 2.0 * beta) / lr, f"RMSprop momentum {beta:g}: (2 + 2 beta) / lr on P^-1 H, lr={lr:g}"
    beta1 = float(g["betas"][0])
    value = (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)
    return value, f"{kind} beta1 {beta1:g}: (2 + 2 beta1) / ((1 - beta1) lr) on P^-1 H, lr={lr:g}"


__all__ = ["PreconditionedOperator", "adam_preconditioner", "stability_threshold"]
