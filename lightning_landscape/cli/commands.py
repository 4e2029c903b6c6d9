"""The ``lightning-landscape`` command: ``LightningCLI`` with our callbacks and a ``multiseed`` subcommand.

``fit``, ``validate`` and ``test`` behave as in any LightningCLI program; ``multiseed`` runs
:class:`~lightning_landscape.multiseed.MultiSeedTrainer` on the same config::

    lightning-landscape fit --config configs/shallow_relu.yaml
    lightning-landscape multiseed --config configs/shallow_relu.yaml --seeds 8 --monitor val_loss --mode min
    lightning-landscape landscape --config configs/shallow_relu.yaml --checkpoint runs/best.ckpt --mode plane

Our callbacks go under ``trainer.callbacks`` in YAML (or ``--trainer.callbacks+=GradientNormMonitor``);
``lightning-landscape fit --help`` lists every option of each of them, and
``--trainer.callbacks.help HessianEigenMonitor`` shows one in jsonargparse's own format.

Class paths in a config are imported from the current directory too (the command puts it on
``sys.path``, as ``python -m`` does), so ``examples.shallow_relu.ShallowReLU`` resolves when the command
runs from the repository root.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser
from typing_extensions import override

from lightning_landscape.cli._lightning import KeepLinesHelpFormatter, SubcommandCLI
from lightning_landscape.cli.help import callbacks_help, format_result
from lightning_landscape.multiseed import MultiSeedConfig, MultiSeedResult

# `multiseed` exit codes (an interrupted run exits 128 + signal, from MultiSeedInterrupted).
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUSY = 3
EXIT_WRITE = 4  # the run folder (or --out_dir) could not be written: a full disk, a read-only folder
# The parts of the configuration that the `model` and `trainer` sections give instead; `root_dir` is a
# method parameter of its own (its default comes from `trainer.default_root_dir`).
_NOT_MULTISEED_OPTIONS = {"model_kwargs", "datamodule_kwargs", "trainer_kwargs", "root_dir"}
_MODEL_AND_DATA = {"model", "datamodule", "train_dataloaders", "val_dataloaders"}


class LandscapeCLI(SubcommandCLI):
    """``LightningCLI`` with the ``multiseed`` and ``landscape`` subcommands and our callbacks in ``--help``.

    Models and data modules are given by class path (``model.class_path``, ``data.class_path``), so one
    command serves every example. A bad option or value fails with jsonargparse's message, and a value
    that our classes reject in ``__init__`` (a negative ``every_n_steps``, an unknown target) fails the
    same way, with exit code 2, before anything trains.

    Args:
        args: arguments to parse instead of ``sys.argv`` (list of strings or a dict), as in LightningCLI.
        run: whether to run the chosen subcommand (``False`` only parses and instantiates).
        **kwargs: forwarded to :class:`~lightning.pytorch.cli.LightningCLI`.

    Example:
        >>> from pathlib import Path
        >>> config = Path(__file__).parents[2] / "configs" / "shallow_relu.yaml"  # in the repository
        >>> cli = LandscapeCLI(args=["--config", str(config), "--trainer.max_steps=10"], run=False)
        >>> type(cli.model).__name__, cli.trainer.max_steps
        ('ShallowReLU', 10)

        With ``run=True`` (the default) the first argument is the subcommand:
        ``LandscapeCLI(args=["fit", "--config", ...])``.
    """

    own_subcommands = ("multiseed", "landscape")

    def __init__(self, args: ArgsType = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("parser_kwargs", {})
        for sub in self.subcommands():
            kwargs["parser_kwargs"].setdefault(sub, {})
            kwargs["parser_kwargs"][sub].setdefault("formatter_class", KeepLinesHelpFormatter)
            kwargs["parser_kwargs"][sub].setdefault("epilog", callbacks_help())
        kwargs["parser_kwargs"].setdefault("formatter_class", KeepLinesHelpFormatter)
        kwargs["parser_kwargs"].setdefault(
            "description",
            "lightning-landscape: LightningCLI with loss-landscape callbacks and multi-seed training.",
        )
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(args=args, run=run, **kwargs)

    @staticmethod
    @override
    def subcommands() -> dict[str, set[str]]:
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
            "test": {"model", "dataloaders", "datamodule"},
            "multiseed": set(_MODEL_AND_DATA),
            "landscape": set(_MODEL_AND_DATA),
        }

    @override
    def subcommand_arguments(self, subcommand: str, parser: LightningArgumentParser) -> list[str]:
        """``multiseed`` takes every :class:`~lightning_landscape.multiseed.MultiSeedConfig` field as an
        option, with its type, default and description, but those the config sections give."""
        if subcommand != "multiseed":
            return []
        skip: set[str | int] = set(_NOT_MULTISEED_OPTIONS)
        return parser.add_class_arguments(MultiSeedConfig, None, skip=skip, instantiate=False)

    @override
    def instantiate_classes(self) -> None:
        try:
            if self.subcommand in self.own_subcommands:
                # No Trainer here: MultiSeedTrainer builds one per seed from the `trainer` section.
                self.config_init = self.parser.instantiate_classes(self.config)
                self.datamodule = self.config_value(self.config_init, "data")
                self.model = self.config_value(self.config_init, "model")
            else:
                super().instantiate_classes()
        except (ValueError, TypeError) as err:
            # Our classes validate in __init__; report like jsonargparse does, without a traceback.
            prog = f"{os.path.basename(sys.argv[0]) or 'lightning-landscape'} {self.subcommand or ''}".strip()
            sys.stderr.write(f"{prog}: error: {err}\n")
            raise SystemExit(2) from err

    def multiseed(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        root_dir: str | None = None,
        **options: Any,
    ) -> MultiSeedResult:
        """Train the model once per seed, keep the best, and print a table of seeds and scores.

        A rerun with the same ``root_dir`` resumes: finished seeds are skipped. Exit codes: 0 every seed
        finished; 1 a seed failed (the table is printed; rerun to retry it); 2 a bad argument, config or
        run folder file, found before training; 3 ``root_dir`` is in use by another process; 4 a file of the
        run folder could not be written (a full disk; one line names it); 143 (SIGTERM) or 130 (Ctrl-C):
        interrupted, rerun the same command to resume.

        Args:
            model: the configured model (rebuilt for every seed from its class path and init args).
            datamodule: the configured data module.
            root_dir: folder of ``seed_<k>/``, ``summary.json``, ``summary.csv``, ``seeds.png`` and
                ``best.ckpt``; unset: ``<trainer.default_root_dir>/multiseed`` (``./multiseed`` without one).
            **options: every other :class:`~lightning_landscape.multiseed.MultiSeedConfig` field
                (``--seeds``, ``--monitor``, ``--mode``, ...) but ``model_kwargs`` (the model's
                ``init_args``); the Trainer's arguments come from the ``trainer`` section.
        """
        from lightning_landscape.multiseed import MultiSeedTrainer, RootDirBusyError

        for key in ("optimizer", "lr_scheduler"):
            if self.config_value(self.config, key) is not None:
                raise SystemExit(
                    f"lightning-landscape multiseed: error: `{key}` in the config is not supported by "
                    "multiseed (every seed rebuilds the model); set it in the model's configure_optimizers."
                )
        model_cfg = self.config_value(self.config, "model")
        model_cls, model_kwargs = _class_and_kwargs(model_cfg, fallback=type(model))
        # The data are rebuilt per seed from their class path and init args too, so the fingerprint holds
        # the datamodule's arguments, as it does for a Python caller's (a rerun on other data is refused).
        data: Any = datamodule
        data_kwargs: dict[str, Any] | None = None
        data_cfg = self.config_value(self.config, "data")
        if datamodule is not None and data_cfg is not None:
            data, data_kwargs = _class_and_kwargs(data_cfg, fallback=type(datamodule))
        trainer_kwargs = _non_default_trainer_kwargs(self.config_value(self.config_init, "trainer", {}))
        # Each seed trains in root_dir/seed_<k>/: the Trainer's own root only decides the default root_dir.
        default_root = trainer_kwargs.pop("default_root_dir", None)
        if root_dir is None:
            root_dir = os.path.join(default_root, "multiseed") if default_root else "multiseed"
        # Passed on as a copy: jsonargparse would follow `**options` into a call to find more options, and
        # they are MultiSeedConfig's fields, added once by `subcommand_arguments`.
        config = dict(options)
        try:
            ms = MultiSeedTrainer(
                root_dir=root_dir, model_kwargs=model_kwargs, datamodule_kwargs=data_kwargs or None,
                **config, **trainer_kwargs,
            )  # fmt: skip
            result = ms.fit(model_cls, datamodule=data)
        except (ValueError, TypeError) as err:
            # MultiSeedTrainer validates before the first seed trains: report it like a parser error.
            sys.stderr.write(f"lightning-landscape multiseed: error: {err}\n")
            raise SystemExit(EXIT_USAGE) from err
        except RootDirBusyError as err:
            sys.stderr.write(f"lightning-landscape multiseed: error: {err}\n")
            raise SystemExit(EXIT_BUSY) from err
        except OSError as err:  # a full disk, a read-only folder: the record on disk stays as it was
            where = err.filename or root_dir
            sys.stderr.write(
                f"lightning-landscape multiseed: error: {where}: {err.strerror or err}; free space (or make"
                " the folder writable) and rerun the same command: finished seeds are kept\n"
            )
            raise SystemExit(EXIT_WRITE) from err
        except RuntimeError as err:  # every seed failed
            sys.stderr.write(f"lightning-landscape multiseed: error: {err}\n")
            raise SystemExit(EXIT_FAILED) from err
        print(format_result(result))
        if result.failed:
            failed = [r.seed for r in result.failed]
            sys.stderr.write(f"lightning-landscape multiseed: seeds {failed} failed; rerun to retry them\n")
            raise SystemExit(EXIT_FAILED)
        return result

    def landscape(
        self,
        model: LightningModule,
        checkpoint: str,
        datamodule: LightningDataModule | None = None,
        mode: Literal["line", "plane"] = "plane",
        directions: Literal["random", "hessian"] = "random",
        span: float = 1.0,
        steps: int = 21,
        num_batches: int = 1,
        seed: int = 0,
        out_dir: str | None = None,
    ) -> Path:
        """Draw the loss line or plane around a saved checkpoint and write PNG + data.

        The loss is the module's ``training_step`` (logging silenced, eval mode) on the first
        ``num_batches`` batches of the datamodule's train dataloader (drawn under ``seed``). Writes
        ``landscape_<mode>.png`` and ``landscape_<mode>.npz`` (reload with ``PlaneResult.load`` /
        ``LineResult.load``) into ``out_dir``. Exit code 2, with one line naming the file, for a bad argument
        (``num_batches`` below 1, an ``out_dir`` that is a file) or a checkpoint that does not load with
        ``weights_only=True`` or does not fit the model, before any work; 4 when the files cannot be written.

        Args:
            model: the configured model (its weights are replaced by the checkpoint's).
            checkpoint: the checkpoint (read with ``weights_only=True``). Not ``ckpt_path``: LightningCLI
                would rebuild the model from the checkpoint's hyperparameters, which a checkpoint written
                outside LightningCLI (a multiseed ``best.ckpt``) cannot always provide.
            datamodule: the configured data module (the probe batches come from its train dataloader).
            mode: ``line`` (along the first direction) or ``plane``.
            directions: ``random`` (filter-normalized) or ``hessian`` (top-2 eigenvectors).
            span: half-width of the grid in units of the directions.
            steps: points per axis.
            num_batches: batches of the train dataloader the loss is averaged over.
            seed: seeds the batches' draw and the random directions.
            out_dir: where the files go; unset: the checkpoint's folder.
        """
        from lightning_landscape.callbacks._batches import draw_batches
        from lightning_landscape.callbacks._probe import TrainingStepLoss
        from lightning_landscape.curvature._checks import check_int
        from lightning_landscape.landscape import hessian_directions, loss_line, loss_plane, random_directions
        from lightning_landscape.multiseed.checkpoints import load_weights

        folder = Path(out_dir) if out_dir is not None else Path(checkpoint).parent
        try:
            if datamodule is None:
                raise ValueError("`landscape` needs a `data` section: the loss is evaluated on its batches")
            check_int("num_batches", num_batches, minimum=1)
            check_int("steps", steps, minimum=2)
            if folder.exists() and not folder.is_dir():
                raise ValueError(
                    f"--out_dir {str(folder)!r} is a file, not a folder: name a folder for the files"
                )
            weights = load_weights(checkpoint, model)
            datamodule.setup("fit")
            batches = draw_batches(datamodule.train_dataloader(), num_batches, seed)
            loss_fn = TrainingStepLoss()
            if directions == "hessian":
                dirs = hessian_directions(weights, loss_fn, batches, k=2, seed=seed).directions
            else:
                dirs = random_directions(weights, 2, seed=seed)
            window = (-float(span), float(span))
            result: Any
            if mode == "line":
                result = loss_line(weights, loss_fn, batches, direction=dirs[0], span=window, steps=steps)
            else:
                result = loss_plane(weights, loss_fn, batches, directions=dirs, span=window, steps=steps)
        except (ValueError, TypeError, OSError) as err:
            sys.stderr.write(f"lightning-landscape landscape: error: {_one_line(err)}\n")
            raise SystemExit(EXIT_USAGE) from err
        result.meta["title"] = f"{mode} along {directions} directions: {os.path.basename(checkpoint)}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            result.save(folder / f"landscape_{mode}.npz")
            result.plot().savefig(folder / f"landscape_{mode}.png", dpi=110)
        except OSError as err:
            where = err.filename or folder
            sys.stderr.write(f"lightning-landscape landscape: error: {where}: {err.strerror or err}\n")
            raise SystemExit(EXIT_WRITE) from err
        print(f"loss at the checkpoint {result.center_loss:.6g}; wrote {folder / f'landscape_{mode}.png'}")
        return folder / f"landscape_{mode}.png"


def _one_line(err: BaseException) -> str:
    """An error as one line (torch's load errors span paragraphs; the first line names the file)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _class_and_kwargs(
    model_cfg: Any, fallback: type
) -> tuple[Callable[..., LightningModule], dict[str, Any]]:
    """The model class and its plain init args from the parsed (not instantiated) config."""
    if model_cfg is None:
        return fallback, {}
    data = model_cfg.as_dict() if hasattr(model_cfg, "as_dict") else dict(model_cfg)
    class_path = data.get("class_path")
    if not class_path:
        return fallback, data
    module_name, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    return cls, {**(data.get("init_args") or {}), **(data.get("dict_kwargs") or {})}


def _non_default_trainer_kwargs(trainer_cfg: Any) -> dict[str, Any]:
    """Only the Trainer arguments the config changes, so MultiSeedTrainer's per-seed defaults apply."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(Trainer.__init__).parameters.items()
        if name != "self"
    }
    out: dict[str, Any] = {}
    for key, value in dict(trainer_cfg).items():
        if key not in defaults:
            continue
        if key == "callbacks" and not value:
            continue
        if key in defaults and _same(value, defaults[key]):
            continue
        out[key] = value
    return out


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return False


def main(args: ArgsType = None) -> None:
    """Entry point of the ``lightning-landscape`` console script.

    Args:
        args: arguments instead of ``sys.argv[1:]``.

    Example:
        >>> from pathlib import Path
        >>> config = Path(__file__).parents[2] / "configs" / "digits.yaml"  # in the repository
        >>> main(["fit", "--config", str(config), "--trainer.fast_dev_run=true",
        ...       "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])
    """
    # Console scripts do not put the working directory on sys.path; configs name example classes by
    # import path relative to it (examples.shallow_relu.ShallowReLU), as `python -m` would find them.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    LandscapeCLI(args=args)


__all__ = ["EXIT_BUSY", "EXIT_FAILED", "EXIT_USAGE", "EXIT_WRITE", "LandscapeCLI", "main"]
