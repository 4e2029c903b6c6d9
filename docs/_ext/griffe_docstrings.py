"""A griffe extension for ``make docs``: read the package's docstrings as its authors wrote them.

The package writes Google docstrings the Lightning way (checked by doctest, read by Sphinx/Napoleon), and
griffe's Google parser differs in a few places. This rewrites the docstring text before griffe parses it
(nothing in the package changes):

* ``Example:`` / ``Example::`` become ``Examples:`` with no blank line after it, the heading griffe reads
  as a doctest section (it reads ``Example:`` as an admonition, and its ``>>>`` lines as Markdown quotes);
* an ``Args:`` or ``Raises:`` entry naming several items (``a, b, c: as in loss_line``) becomes one entry per
  item, so each parameter is still checked against the signature (a misspelt one stays a build error);
* the Sphinx roles ``:func:`x``` (``:class:``, ``:meth:``, ...) become code, ``:math:`x``` and ``.. math::``
  blocks become MathJax.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_EXAMPLE = re.compile(r"^(\s*)Examples?::?\s*$")
_LIST_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Params|Raises|Exceptions):\s*$")
_SEVERAL = re.compile(r"^(\s*)(\w+(?:\s*,\s*\w+)+)\s*:(.*)$")
_ROLE = re.compile(r":(?:func|class|meth|mod|attr|exc|data|obj|ref):`~?\.?([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_MATH_BLOCK = re.compile(r"^(\s*)\.\. math::\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _split_entries(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        header = _LIST_SECTION.match(line)
        if not header:
            continue
        base = _indent(line)
        item_indent: int | None = None
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
            entry = lines[i]
            i += 1
            if not entry.strip():
                out.append(entry)
                continue
            if item_indent is None:
                item_indent = _indent(entry)
            several = _SEVERAL.match(entry) if _indent(entry) == item_indent else None
            if several is None:
                out.append(entry)
                continue
            # The entry's continuation lines go with every name.
            body = []
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) > item_indent:
                body.append(lines[i])
                i += 1
            for name in re.split(r"\s*,\s*", several.group(2)):
                out.append(f"{several.group(1)}{name}:{several.group(3)}")
                out.extend(body)
    return out


def _math_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        block = _MATH_BLOCK.match(lines[i])
        if not block:
            out.append(lines[i])
            i += 1
            continue
        base = _indent(lines[i])
        i += 1
        body = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
            body.append(lines[i].strip())
            i += 1
        while body and not body[-1]:
            body.pop()
        pad = " " * base
        out.extend([f"{pad}$$", *(f"{pad}{b}" for b in body if b), f"{pad}$$", ""])
    return out


def rewrite(text: str) -> str:
    """The docstring ``text`` in the form griffe's Google parser and Markdown read as intended."""
    lines: list[str] = []
    for line in text.split("\n"):
        if lines and _EXAMPLE.match(lines[-1]) and not line.strip():
            continue  # RST's `Example::` has a blank line before its block; a Google section may not
        lines.append(_EXAMPLE.sub(r"\1Examples:", line))
    lines = _math_blocks(_split_entries(lines))
    text = "\n".join(lines)
    text = _MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)
    return _ROLE.sub(
        lambda m: f"`{m.group(1).rsplit('.', 1)[-1] if m.group(0).count('~') else m.group(1)}`", text
    )


class GoogleAsWritten(Extension):
    """Rewrite every docstring with :func:`rewrite` once the object tree is built."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
