"""What the command shows: each option of our callbacks and of ``multiseed`` in --help, the seeds table."""

from __future__ import annotations

import dataclasses
import inspect
import sys

import pytest
from docstring_parser import DocstringStyle, parse

from lightning_landscape.callbacks import GradientNormMonitor, HessianEigenMonitor, RiskGapMonitor
from lightning_landscape.cli import main
from lightning_landscape.cli.help import CALLBACKS, callbacks_help, format_result
from lightning_landscape.multiseed import MultiSeedConfig, MultiSeedResult, SeedRun

DOCUMENTED = (GradientNormMonitor, HessianEigenMonitor, RiskGapMonitor)


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    # In-process runs pass `args`; LightningCLI warns when sys.argv (pytest's) has arguments too.
    monkeypatch.setattr(sys, "argv", ["lightning-landscape"])


def _documented(cls: type) -> dict[str, str]:
    try:
        params = parse(inspect.getdoc(cls) or "", DocstringStyle.GOOGLE).params
    except Exception as err:  # docstring_parser.ParseError: jsonargparse then shows no descriptions either
        pytest.fail(f"{cls.__name__}'s docstring is not valid Google style, so --help loses it: {err}")
    return {p.arg_name: " ".join((p.description or "").split()) for p in params}


def test_help_documents_every_option_of_our_callbacks(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for cls in DOCUMENTED:
        doc = _documented(cls)
        assert f"lightning_landscape.{cls.__name__}" in text
        for name, param in inspect.signature(cls).parameters.items():
            assert f"{name} (" in text, f"{cls.__name__}.{name} missing from --help"
            assert doc.get(name), f"{cls.__name__}.{name} has no description in its docstring"
            assert doc[name][:40] in text, f"{cls.__name__}.{name}: description missing from --help"
            if param.default is not param.empty:
                assert f"default: {param.default!r}" in text


def test_callbacks_help_names_each_of_our_callbacks():
    text = callbacks_help()
    assert all(f"  {name} (lightning_landscape.{name})" in text for name in CALLBACKS)


def test_multiseed_help_documents_every_configuration_option(capsys):
    with pytest.raises(SystemExit) as info:
        main(["multiseed", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    doc = _documented(MultiSeedConfig)
    for field in dataclasses.fields(MultiSeedConfig):
        assert doc.get(field.name), f"MultiSeedConfig.{field.name} has no description"
        if field.name in (
            "model_kwargs",
            "datamodule_kwargs",
            "trainer_kwargs",
        ):  # model, data, trainer sections
            continue
        assert f"--{field.name} " in text, f"--{field.name} missing from multiseed --help"
        if field.name == "root_dir":  # the command's own: its default comes from trainer.default_root_dir
            continue
        assert doc[field.name][:40] in text, f"{field.name}: description missing from --help"


def test_format_result_lists_every_seed_and_the_best():
    runs = [
        SeedRun(seed=3, status="finished", score=0.5, wall_time=1.0),
        SeedRun(seed=4, status="failed", error="Traceback ...\nValueError: boom"),
        SeedRun(seed=5, status="finished", score=0.25, wall_time=2.0),
    ]
    result = MultiSeedResult(runs, "val_loss", "min", 5, 0.25, "/r/best.ckpt", "/r")
    text = format_result(result)
    lines = text.splitlines()
    assert any(line.split()[:3] == ["3", "finished", "0.5"] for line in lines)
    assert any(line.split()[:3] == ["5", "finished", "0.25"] and line.endswith("<- best") for line in lines)
    assert "error: ValueError: boom" in text
    assert "2/3 seeds finished" in text and "mean 0.375" in text
    assert "best checkpoint: /r/best.ckpt" in text
