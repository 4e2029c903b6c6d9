r"""Which parameters a curvature operator differentiates by: all trainable ones, or a named selection.

A selection is a list of module or parameter name prefixes (``["encoder", "head.weight"]``: a name matches
a prefix when it equals it or continues it after a dot, so ``"layer1"`` does not match ``"layer10.bias"``)
or one regular expression (a ``str``, searched with :func:`re.search` in each name, e.g.
``r"^layers\.0\."``). The names are those of ``model.named_parameters()``; the selected parameters keep
that order, so the operator is the block of the full Hessian on their rows and columns. A parameter shared by
several modules (tied weights: GPT-2's LM head is its token embedding) is listed once, under its first name,
and is selected when any of its names matches (``["lm_head"]`` selects ``transformer.wte.weight``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

ParamSelection = str | Sequence[str] | None
"""``None`` (every trainable parameter), a list of name prefixes, or one regular expression."""

_SHOWN = 8


def _matcher(params: str | Sequence[str]) -> tuple[str, object]:
    if isinstance(params, str):
        try:
            pattern = re.compile(params)
        except re.error as err:
            raise ValueError(f"`params` is not a valid regular expression ({err}): {params!r}.") from err
        return "regex", pattern
    if isinstance(params, Sequence) and params and all(isinstance(p, str) and p for p in params):
        return "prefixes", tuple(p.rstrip(".") for p in params)
    raise ValueError(
        "`params` must be None, a non-empty list of parameter/module name prefixes (non-empty strings) or "
        f"one regular expression (a str), got {params!r}."
    )


def _matches(kind: str, how: object, name: str) -> bool:
    if kind == "regex":
        assert isinstance(how, re.Pattern)
        return how.search(name) is not None
    assert isinstance(how, tuple)
    return any(name == p or name.startswith(p + ".") for p in how)


def select_parameters(model: nn.Module, params: ParamSelection = None) -> list[tuple[str, nn.Parameter]]:
    """The trainable ``(name, parameter)`` pairs of ``model`` that ``params`` selects, in model order.

    Args:
        model: the model.
        params: ``None`` for every trainable parameter, a list of name prefixes or a regular expression; a
            tied parameter is selected when any of its names matches.

    Raises:
        ValueError: if ``params`` is malformed, or selects no trainable parameter (the message lists the
            trainable names, and says so when the selection only hit frozen parameters).

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> [name for name, _ in select_parameters(model, ["2"])]
        ['2.weight', '2.bias']
        >>> [name for name, _ in select_parameters(model, r"weight$")]
        ['0.weight', '2.weight']
    """
    named = list(model.named_parameters())
    trainable = [(n, p) for n, p in named if p.requires_grad]
    if params is None:
        return trainable
    kind, how = _matcher(params)
    aliases: dict[int, list[str]] = {}  # every name of each parameter, tied ones included
    for n, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(n)
    chosen = [(n, p) for n, p in trainable if any(_matches(kind, how, a) for a in aliases[id(p)])]
    if chosen:
        return chosen
    frozen = [n for n, p in named if not p.requires_grad and _matches(kind, how, n)]
    names = [n for n, _ in trainable]
    shown = ", ".join(names[:_SHOWN]) + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")
    what = f"prefixes {list(params)}" if kind == "prefixes" else f"regex {params!r}"
    hint = f" (it matches only frozen parameters: {frozen[:_SHOWN]})" if frozen else ""
    raise ValueError(
        f"`params`: the {what} selects no trainable parameter{hint}. Valid names: {shown}. Pass module or "
        "parameter name prefixes (e.g. ['encoder', 'head.weight']) or a regular expression."
    )
