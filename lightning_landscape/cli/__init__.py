"""The ``lightning-landscape`` command: ``LightningCLI`` with our callbacks, ``multiseed`` and ``landscape``.

:mod:`~lightning_landscape.cli.commands` holds the command and its subcommands,
:mod:`~lightning_landscape.cli.help` what it shows, and :mod:`~lightning_landscape.cli._lightning` every
private ``LightningCLI`` member it needs.
"""

from lightning_landscape.cli.commands import LandscapeCLI, main
from lightning_landscape.cli.help import CALLBACKS, callbacks_help, format_result

__all__ = ["CALLBACKS", "LandscapeCLI", "callbacks_help", "format_result", "main"]
