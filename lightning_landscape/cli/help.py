"""What the ``lightning-landscape`` command shows: our callbacks' options in ``--help``, the seeds table."""

from __future__ import annotations

import inspect
import os
from typing import Any

from lightning_landscape.multiseed import MultiSeedResult

#: Our callbacks, documented in ``--help`` (import path relative to ``lightning_landscape``).
CALLBACKS: tuple[str, ...] = (
    "GradientNormMonitor",
    "HessianEigenMonitor",
    "LossLandscapeMonitor",
    "RiskGapMonitor",
)


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


def format_result(result: MultiSeedResult) -> str:
    """A plain-text table of seeds, statuses and scores, then the best seed and checkpoint.

    Args:
        result: what :meth:`MultiSeedTrainer.fit` returned.

    Returns:
        The table ``lightning-landscape multiseed`` prints.

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
        if run.status == "pruned":
            mark += f"  (pruned at rung {run.extra.get('pruned_rung')}: its score there)"
        rows.append(f"{run.seed:>6}  {run.status:<9} {score:>14}{test}  {run.wall_time:>9.1f}{mark}")
        if run.status == "failed" and run.error:
            rows.append(f"{'':>8}error: {run.error.strip().splitlines()[-1]}")
    stats = result.summary_stats()
    rows.append("")
    rows.append(
        f"{len(result.finished)}/{len(result.runs)} seeds finished; {result.monitor} ({result.mode}): "
        + ", ".join(f"{k} {v:.6g}" for k, v in stats.items())
    )
    intervals = result.summary_intervals() if len(result.finished) > 1 else None
    if intervals is not None:
        rows.append(
            "  intervals: "
            + ", ".join(
                f"{name} {_end(iv.low)} .. {_end(iv.high)} ({iv.confidence:.0%})"
                for name, iv in (
                    ("mean", intervals.mean),
                    ("median", intervals.median),
                    ("std", intervals.std),
                )
            )
        )
    rows.append(f"best seed {result.best_seed}: {result.monitor} = {result.best_score:.6g}")
    if result.best_test_score is not None and result.selection is not None:
        sel = result.selection
        rows.append(
            f"its test score {result.best_test_score:.6g}: optimism {sel['optimism']:+.3g} (test - val,"
            f" signed); mean test score of the {sel['seeds_tested']} tested seed(s)"
            f" {sel['mean_test_score']:.6g}"
        )
    if result.noise_floor is not None and result.noise_floor.get("line"):
        floor = result.noise_floor
        rows.append(
            f"noise floor (seed {floor['winner']} vs median seed {floor['median_seed']}): {floor['line']}"
        )
    curve = result.best_of_k()
    if curve is not None:
        band = f"; {curve.confidence:.0%} band on the expected" if curve.confidence is not None else ""
        rows.append(f"best of k seeds drawn at random (expected {result.monitor} [10%, 90%]{band}):")
        for k in curve.table_ks():
            row = curve.at(k)
            text = f"  k={k:<4} {row['expected']:.6g}  [{row['q_low']:.6g}, {row['q_high']:.6g}]"
            if curve.confidence is not None:
                text += f"  band {_end(row['expected_low'])} .. {_end(row['expected_high'])}"
            if row["expected_test"] is not None:
                text += f"  test {row['expected_test']:.6g}"
            rows.append(text)
    if result.combined:
        rows.append("using all seeds (val/test: the module's metrics; prediction: averaged outputs):")
        for row in result.combined:
            rows.append("  " + _combined_row(row))
    rows.append(f"best checkpoint: {result.best_model_path}")
    rows.append(f"summary: {os.path.join(result.root_dir, 'summary.json')}")
    return "\n".join(rows)


def _combined_row(row: dict[str, Any]) -> str:
    """One row of the soup/ensemble table: name, seeds, cost, scores."""

    def num(value: Any) -> str:
        return "-" if value is None else f"{value:.6g}"

    def pred(scores: Any) -> str:
        return "-" if not scores else ", ".join(f"{k} {v:.4g}" for k, v in scores.items())

    return (
        f"{row['name']:<20} seeds {row['seeds']}  x{row['forward_passes']} forward  val {num(row.get('val'))}"
        f"  test {num(row.get('test'))}  prediction val [{pred(row.get('val_prediction'))}]"
        f" test [{pred(row.get('test_prediction'))}]"
    )


def _end(value: float | None) -> str:
    """One end of a band: ``?`` where no finite bound exists."""
    return "?" if value is None else f"{value:.6g}"


__all__ = ["CALLBACKS", "callbacks_help", "format_result"]
