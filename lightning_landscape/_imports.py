"""Import paths given as strings (YAML-friendly arguments), resolved once for every layer."""

from __future__ import annotations

import importlib
from typing import Any


def import_object(path: Any, argument: str, example: str = "pkg.module:name") -> Any:
    """The object named by ``"pkg.module:attr"`` or ``"pkg.module.attr"`` (``attr`` may be dotted).

    Raises:
        ValueError: naming ``argument`` if ``path`` is not such a string or cannot be imported.
    """
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"`{argument}` must be an import path like {example!r}, got {path!r}")
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"`{argument}` must be an import path like {example!r}, got {path!r}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"`{argument}`={path!r} could not be imported: {err}") from err
    return obj
