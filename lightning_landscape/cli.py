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
from typing import TYPE_CHECKING, Any, Literal

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from typing_extensions import override

if TYPE_CHECKING:
    from lightning_landscape.multiseed import MultiSeedResult

#: Our callbacks, documented in ``--help`` (import path relative to ``lightning_landscape``).
CALLBACKS: tuple[str, ...] = (
    "GradientNormMonitor",
    "HessianEigenMonitor",
    "LossLandscapeMonitor",
    "RiskGapMonitor",
)

_MULTISEED_SKIP = {"model", "datamodule", "train_dataloaders", "val_dataloaders"}
# `multiseed` exit codes (an interrupted run exits 128 + signal, from MultiSeedInterrupted).
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUSY = 3
# Subcommands that are methods of LandscapeCLI (no Trainer is built for them).
_OWN_SUBCOMMANDS = ("multiseed", "landscape")


class _HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's formatter, except that the description and epilog keep their line breaks."""

    @override
    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def _callback_classes() -> list[type]:
    import lightning_landscape.callbacks as callbacks

    return [getattr(callbacks, name) for name in CALLBACKS]


def callbacks_help() -> str:
    """Every ``__init__`` option of our callbacks, with type, default and the docstring's description.

    This is the epilog of each subcommand's ``--help``.

    Example:
        >>> text = callbacks_help()
        >>> all(name in text for name in CALLBACKS)
        True
    """
    from docstring_parser import parse

    lines = [
        "lightning-landscape callbacks (add in YAML under trainer.callbacks, or",
        "--trainer.callbacks+=NAME --trainer.callbacks.OPTION=VALUE on the command line):",
    ]
    for cls in _callback_classes():
        doc = parse(inspect.getdoc(cls) or "")
        described = {p.arg_name: " ".join((p.description or "").split()) for p in doc.params}
        lines.append("")
        lines.append(f"  {cls.__name__} (lightning_landscape.{cls.__name__}): {doc.short_description or ''}")
        for name, param in inspect.signature(cls).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            annotation = (
                param.annotation
                if isinstance(param.annotation, str)
                else getattr(param.annotation, "__name__", str(param.annotation))
            )
            default = "" if param.default is param.empty else f", default: {param.default!r}"
            lines.append(f"    {name} ({annotation}{default})")
            if described.get(name):
                lines.append(f"        {described[name]}")
    return "\n".join(lines) + "\n"


class LandscapeCLI(LightningCLI):
    """``LightningCLI`` with the ``multiseed`` subcommand and our callbacks documented in ``--help``.

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
        >>> config = Path(__file__).parents[1] / "configs" / "shallow_relu.yaml"  # in the repository
        >>> cli = LandscapeCLI(args=["--config", str(config), "--trainer.max_steps=10"], run=False)
        >>> type(cli.model).__name__, cli.trainer.max_steps
        ('ShallowReLU', 10)

        With ``run=True`` (the default) the first argument is the subcommand:
        ``LandscapeCLI(args=["fit", "--config", ...])``.
    """

    def __init__(self, args: ArgsType = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("parser_kwargs", {})
        for sub in self.subcommands():
            kwargs["parser_kwargs"].setdefault(sub, {})
            kwargs["parser_kwargs"][sub].setdefault("formatter_class", _HelpFormatter)
            kwargs["parser_kwargs"][sub].setdefault("epilog", callbacks_help())
        kwargs["parser_kwargs"].setdefault("formatter_class", _HelpFormatter)
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
            "multiseed": set(_MULTISEED_SKIP),
            "landscape": set(_MULTISEED_SKIP),
        }

    @override
    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        # LightningCLI looks every subcommand up on the Trainer; `multiseed` lives on this class instead.
        self._subcommand_parsers: dict[str, LightningArgumentParser] = {}
        parser_subcommands = parser.add_subcommands()
        for subcommand in self.subcommands():
            klass: type = type(self) if subcommand in _OWN_SUBCOMMANDS else Trainer
            fn = getattr(klass, subcommand)
            description = (inspect.getdoc(fn) or "").split("\n")[0]
            subparser_kwargs = kwargs.get(subcommand, {})
            subparser_kwargs.setdefault("description", description)
            subcommand_parser = self._prepare_subcommand_parser(klass, subcommand, **subparser_kwargs)
            self._subcommand_parsers[subcommand] = subcommand_parser
            parser_subcommands.add_subcommand(subcommand, subcommand_parser, help=description)

    @override
    def instantiate_classes(self) -> None:
        try:
            if self.subcommand in _OWN_SUBCOMMANDS:
                # No Trainer here: MultiSeedTrainer builds one per seed from the `trainer` section.
                self.config_init = self.parser.instantiate_classes(self.config)
                self.datamodule = self._get(self.config_init, "data")
                self.model = self._get(self.config_init, "model")
            else:
                super().instantiate_classes()
        except (ValueError, TypeError) as err:
            # Our classes validate in __init__; report like jsonargparse does, without a traceback.
            prog = f"{os.path.basename(sys.argv[0]) or 'lightning-landscape'} {self.subcommand or ''}".strip()
            sys.stderr.write(f"{prog}: error: {err}\n")
            raise SystemExit(2) from err

    @override
    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand not in _OWN_SUBCOMMANDS:
            super()._run_subcommand(subcommand)
            return
        fn_kwargs = {
            k: v
            for k, v in self.config_init[subcommand].items()
            if k in self._subcommand_method_arguments[subcommand]
        }
        getattr(self, subcommand)(model=self.model, datamodule=self.datamodule, **fn_kwargs)

    def multiseed(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        seeds: int | list[int] = 5,
        monitor: str = "val_loss",
        mode: Literal["min", "max"] = "min",
        executor: Literal["sequential", "ray", "vectorized"] = "sequential",
        root_dir: str | None = None,
        ray_address: str | None = None,
        cpus_per_seed: float = 1.0,
        gpus_per_seed: float = 0.0,
        max_concurrent: int | None = None,
        allow_config_change: bool = False,
        test: Literal["best", "all", "none"] = "best",
        test_monitor: str | None = None,
        select_on_test: bool = False,
        barriers: Literal["none", "best", "all"] = "none",
        barrier_tol: float = 0.01,
        quiet: bool = False,
    ) -> MultiSeedResult:
        """Train the model once per seed, keep the best, and print a table of seeds and scores.

        A rerun with the same ``root_dir`` resumes: finished seeds are skipped. Exit codes: 0 every seed
        finished; 1 a seed failed (the table is printed; rerun to retry it); 2 a bad argument, config or
        run folder file, found before training; 3 ``root_dir`` is in use by another process; 143 (SIGTERM)
        or 130 (Ctrl-C): interrupted, rerun the same command to resume.

        Args:
            model: the configured model (rebuilt for every seed from its class path and init args).
            datamodule: the configured data module.
            seeds: how many seeds (0, 1, ..., n-1) or an explicit list of seeds.
            monitor: the logged metric that ranks the seeds.
            mode: ``min`` or ``max``: whether a lower or a higher ``monitor`` is better.
            executor: ``sequential`` (in-process), ``ray`` (one Ray task per seed) or ``vectorized``
                (all seeds in one batched model; the model must qualify).
            root_dir: folder of ``seed_<k>/``, ``summary.json``, ``summary.csv``, ``seeds.png`` and
                ``best.ckpt``; unset: ``<trainer.default_root_dir>/multiseed`` (``./multiseed`` without one).
            ray_address: address of a running Ray cluster; local cluster if unset.
            cpus_per_seed: CPUs reserved per seed (Ray).
            gpus_per_seed: GPUs reserved per seed (Ray).
            max_concurrent: at most this many seeds at once (Ray).
            allow_config_change: rank seeds of ``root_dir`` trained with another configuration together
                with the new ones (a rerun with another configuration is refused otherwise).
            test: after the selection, test the winner's best checkpoint (``best``), every seed's
                (``all``) or none, when the datamodule has a test split.
            test_monitor: the test metric recorded as the test score; unset: ``monitor`` with ``val``
                replaced by ``test``.
            select_on_test: allow a ``monitor`` that names a test metric (selecting on the test set makes
                the winner's score optimistic).
            barriers: loss barriers between the best seed's best checkpoint and each other seed's
                (``best``), the full K x K matrix (``all``) or none; written to ``summary.json``,
                ``barriers.png`` and ``interpolation.png``.
            barrier_tol: the barrier below which a seed shares the best seed's basin.
            quiet: no progress bar over the seeds and no Lightning notices below a warning.
        """
        from lightning_landscape.multiseed import MultiSeedTrainer
        from lightning_landscape.multiseed.record import RootDirBusyError

        for key in ("optimizer", "lr_scheduler"):
            if self._get(self.config, key) is not None:
                raise SystemExit(
                    f"lightning-landscape multiseed: error: `{key}` in the config is not supported by "
                    "multiseed (every seed rebuilds the model); set it in the model's configure_optimizers."
                )
        model_cfg = self._get(self.config, "model")
        model_cls, model_kwargs = _class_and_kwargs(model_cfg, fallback=type(model))
        trainer_kwargs = _non_default_trainer_kwargs(self._get(self.config_init, "trainer", default={}))
        # Each seed trains in root_dir/seed_<k>/: the Trainer's own root only decides the default root_dir.
        default_root = trainer_kwargs.pop("default_root_dir", None)
        if root_dir is None:
            root_dir = os.path.join(default_root, "multiseed") if default_root else "multiseed"
        try:
            ms = MultiSeedTrainer(
                seeds=seeds,
                monitor=monitor,
                mode=mode,
                root_dir=root_dir,
                executor=executor,
                model_kwargs=model_kwargs,
                ray_address=ray_address,
                cpus_per_seed=cpus_per_seed,
                gpus_per_seed=gpus_per_seed,
                max_concurrent=max_concurrent,
                allow_config_change=allow_config_change,
                test=test,
                test_monitor=test_monitor,
                select_on_test=select_on_test,
                barriers=False if barriers == "none" else barriers,
                barrier_tol=barrier_tol,
                quiet=quiet,
                **trainer_kwargs,
            )
            result = ms.fit(model_cls, datamodule=datamodule)
        except (ValueError, TypeError) as err:
            # MultiSeedTrainer validates before the first seed trains: report it like a parser error.
            sys.stderr.write(f"lightning-landscape multiseed: error: {err}\n")
            raise SystemExit(EXIT_USAGE) from err
        except RootDirBusyError as err:
            sys.stderr.write(f"lightning-landscape multiseed: error: {err}\n")
            raise SystemExit(EXIT_BUSY) from err
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
        ``LineResult.load``) into ``out_dir``. Exit code 2 for a bad argument or a checkpoint that does not
        fit the model.

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
        import torch

        from lightning_landscape.callbacks._probe import TrainingStepLoss
        from lightning_landscape.landscape import hessian_directions, loss_line, loss_plane, random_directions
        from lightning_landscape.multiseed.barriers import load_weights

        try:
            if datamodule is None:
                raise ValueError("`landscape` needs a `data` section: the loss is evaluated on its batches")
            weights = load_weights(checkpoint, model)
            datamodule.setup("fit")
            batches: list[Any] = []
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                for batch in datamodule.train_dataloader():
                    batches.append(batch)
                    if len(batches) >= num_batches:
                        break
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
            sys.stderr.write(f"lightning-landscape landscape: error: {err}\n")
            raise SystemExit(EXIT_USAGE) from err
        result.meta["title"] = f"{mode} along {directions} directions: {os.path.basename(checkpoint)}"
        folder = Path(out_dir) if out_dir is not None else Path(checkpoint).parent
        folder.mkdir(parents=True, exist_ok=True)
        result.save(folder / f"landscape_{mode}.npz")
        result.plot().savefig(folder / f"landscape_{mode}.png", dpi=110)
        print(f"loss at the checkpoint {result.center_loss:.6g}; wrote {folder / f'landscape_{mode}.png'}")
        return folder / f"landscape_{mode}.png"


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


def format_result(result: MultiSeedResult) -> str:
    """A plain-text table of seeds, statuses and scores, then the best seed and checkpoint.

    Args:
        result: what :meth:`MultiSeedTrainer.fit` returned.

    Example:
        >>> from lightning_landscape.multiseed import MultiSeedResult, SeedRun
        >>> runs = [SeedRun(0, "finished", 0.25, wall_time=1.0), SeedRun(1, "failed", error="nan")]
        >>> result = MultiSeedResult(runs, "val_loss", "min", 0, 0.25, "runs/x/best.ckpt", "runs/x")
        >>> "best seed 0" in format_result(result)
        True
    """
    tested = any(r.test_score is not None for r in result.runs)
    test_head = f"  {'test score':>12}" if tested else ""
    header = f"{'seed':>6}  {'status':<9} {result.monitor:>14}{test_head}  {'time [s]':>9}"
    rows = [header, "-" * len(header)]
    for run in result.runs:
        score = "" if run.score is None else f"{run.score:.6g}"
        test = f"  {'' if run.test_score is None else f'{run.test_score:.6g}':>12}" if tested else ""
        mark = "  <- best" if run.seed == result.best_seed and run.status == "finished" else ""
        mark += "  (still improving)" if run.still_improving else ""
        rows.append(f"{run.seed:>6}  {run.status:<9} {score:>14}{test}  {run.wall_time:>9.1f}{mark}")
        if run.status == "failed" and run.error:
            rows.append(f"{'':>8}error: {run.error.strip().splitlines()[-1]}")
    stats = result.summary_stats()
    rows.append("")
    rows.append(
        f"{len(result.finished)}/{len(result.runs)} seeds finished; {result.monitor} ({result.mode}): "
        + ", ".join(f"{k} {v:.6g}" for k, v in stats.items())
    )
    rows.append(f"best seed {result.best_seed}: {result.monitor} = {result.best_score:.6g}")
    if result.best_test_score is not None and result.selection is not None:
        sel = result.selection
        rows.append(
            f"its test score {result.best_test_score:.6g}: optimism {sel['optimism']:+.3g} (test - val,"
            f" signed); mean test score of the {sel['seeds_tested']} tested seed(s)"
            f" {sel['mean_test_score']:.6g}"
        )
    curve = result.best_of_k()
    if curve is not None:
        rows.append(f"best of k seeds drawn at random (expected {result.monitor} [10%, 90%]):")
        for k in curve.table_ks():
            row = curve.at(k)
            text = f"  k={k:<4} {row['expected']:.6g}  [{row['q_low']:.6g}, {row['q_high']:.6g}]"
            if row["expected_test"] is not None:
                text += f"  test {row['expected_test']:.6g}"
            rows.append(text)
    rows.append(f"best checkpoint: {result.best_model_path}")
    rows.append(f"summary: {os.path.join(result.root_dir, 'summary.json')}")
    return "\n".join(rows)


def main(args: ArgsType = None) -> None:
    """Entry point of the ``lightning-landscape`` console script.

    Args:
        args: arguments instead of ``sys.argv[1:]``.

    Example:
        >>> from pathlib import Path
        >>> config = Path(__file__).parents[1] / "configs" / "digits.yaml"  # in the repository
        >>> main(["fit", "--config", str(config), "--trainer.fast_dev_run=true",
        ...       "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])
    """
    # Console scripts do not put the working directory on sys.path; configs name example classes by
    # import path relative to it (examples.shallow_relu.ShallowReLU), as `python -m` would find them.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    LandscapeCLI(args=args)


if __name__ == "__main__":
    main()

__all__ = ["CALLBACKS", "LandscapeCLI", "callbacks_help", "format_result", "main"]
