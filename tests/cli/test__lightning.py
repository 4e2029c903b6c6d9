"""Each private ``LightningCLI``/argparse member that cli/_lightning.py uses, on a tiny CLI of our own."""

from __future__ import annotations

import sys
from typing import Any, ClassVar

import pytest
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser
from typing_extensions import override

from lightning_landscape.cli._lightning import KeepLinesHelpFormatter, SubcommandCLI
from tests.callbacks._cb_helpers import TinyData, TinyRegression

MODEL = "tests.callbacks._cb_helpers.TinyRegression"
DATA = "tests.callbacks._cb_helpers.TinyData"


class HelloCLI(SubcommandCLI):
    """One own subcommand, ``hello``, with a method parameter and an option added by the hook."""

    own_subcommands = ("hello",)
    calls: ClassVar[list[dict[str, Any]]] = []

    @staticmethod
    @override
    def subcommands() -> dict[str, set[str]]:
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "hello": {"model", "datamodule"},
        }

    @override
    def subcommand_arguments(self, subcommand: str, parser: LightningArgumentParser) -> list[str]:
        parser.add_argument("--shout", type=bool, default=False)
        return ["shout"]

    @override
    def instantiate_classes(self) -> None:
        if self.subcommand == "hello":
            self.config_init = self.parser.instantiate_classes(self.config)
            self.model = self.config_value(self.config_init, "model")
            self.datamodule = self.config_value(self.config_init, "data")
        else:
            super().instantiate_classes()

    def hello(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        name: str = "x",
        **options: Any,
    ) -> None:
        """Say hello.

        Args:
            model: the model.
            datamodule: the data.
            name: whom to greet.
            **options: what the hook added.
        """
        HelloCLI.calls.append({"model": model, "datamodule": datamodule, "name": name, **options})


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-landscape"])
    HelloCLI.calls.clear()


def test_own_subcommand_is_routed_to_the_method_with_its_options_and_the_hooks():
    # _add_subcommands, _prepare_subcommand_parser, _subcommand_method_arguments, _run_subcommand
    cli = HelloCLI(args=["hello", f"--model={MODEL}", f"--data={DATA}", "--name=you", "--shout=true"])
    (call,) = HelloCLI.calls
    assert isinstance(call["model"], TinyRegression) and isinstance(call["datamodule"], TinyData)
    assert call["name"] == "you" and call["shout"] is True
    assert set(cli._subcommand_parsers) == {"fit", "hello"}
    assert cli._subcommand_method_arguments["hello"] == ["name", "shout"]


def test_config_value_reads_the_running_subcommand_section():
    # _get
    cli = HelloCLI(args=["hello", f"--model={MODEL}", "--name=me"])
    assert cli.config_value(cli.config, "name") == "me"
    assert cli.config_value(cli.config, "nothing", 7) == 7


def test_trainer_subcommands_still_run_through_lightning(tmp_path):
    HelloCLI(
        args=["fit", f"--model={MODEL}", f"--data={DATA}", "--trainer.fast_dev_run=true",
              f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
              "--trainer.enable_model_summary=false", "--trainer.logger=false"]
    )  # fmt: skip
    assert HelloCLI.calls == []


def test_help_formatter_keeps_the_line_breaks_of_description_and_epilog():
    # argparse's HelpFormatter._fill_text
    formatter = KeepLinesHelpFormatter(prog="x")
    assert formatter._fill_text("a\nb  c\n", width=3, indent="  ") == "  a\n  b  c\n"
