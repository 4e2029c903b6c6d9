"""Every private ``LightningCLI`` (and argparse) member that ``cli/`` uses, each tested in its test module.

:class:`SubcommandCLI` lets a ``LightningCLI`` subclass have subcommands of its own (methods of the
subclass, no ``Trainer`` built for them) beside ``fit``/``validate``/``test``, with public hooks instead of
the private members Lightning routes subcommands through. A Lightning upgrade that renames one of them
breaks this module and its test, nothing else.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override


class KeepLinesHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's formatter, except that the description and epilog keep their line breaks."""

    @override
    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


class SubcommandCLI(LightningCLI):
    """``LightningCLI`` whose subcommands in :attr:`own_subcommands` are methods of the subclass.

    Such a subcommand's options are its method's parameters (as for ``Trainer.fit``) plus those
    :meth:`subcommand_arguments` adds; it is called with ``model=``, ``datamodule=`` and every option.
    """

    #: Subcommands that are methods of the subclass (no Trainer is built for them).
    own_subcommands: ClassVar[tuple[str, ...]] = ()

    def subcommand_arguments(self, subcommand: str, parser: LightningArgumentParser) -> list[str]:
        """Adds options of an own ``subcommand`` beyond its method's parameters; returns their keys."""
        return []

    def config_value(self, config: Any, key: str, default: Any = None) -> Any:
        """``config[key]`` of the running subcommand's section (or of the top level without one)."""
        return self._get(config, key, default)

    @override
    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        # LightningCLI looks every subcommand up on the Trainer; ours live on this class instead.
        self._subcommand_parsers: dict[str, LightningArgumentParser] = {}
        parser_subcommands = parser.add_subcommands()
        for subcommand in self.subcommands():
            own = subcommand in self.own_subcommands
            klass: type = type(self) if own else Trainer
            description = (inspect.getdoc(getattr(klass, subcommand)) or "").split("\n")[0]
            subparser_kwargs = kwargs.get(subcommand, {})
            subparser_kwargs.setdefault("description", description)
            subcommand_parser = self._prepare_subcommand_parser(klass, subcommand, **subparser_kwargs)
            if own:
                added = self.subcommand_arguments(subcommand, subcommand_parser)
                self._subcommand_method_arguments[subcommand].extend(added)
            self._subcommand_parsers[subcommand] = subcommand_parser
            parser_subcommands.add_subcommand(subcommand, subcommand_parser, help=description)

    @override
    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand not in self.own_subcommands:
            super()._run_subcommand(subcommand)
            return
        options = self._subcommand_method_arguments[subcommand]
        fn_kwargs = {k: v for k, v in self.config_init[subcommand].items() if k in options}
        getattr(self, subcommand)(model=self.model, datamodule=self.datamodule, **fn_kwargs)


__all__ = ["KeepLinesHelpFormatter", "SubcommandCLI"]
