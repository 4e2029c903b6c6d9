r"""Use all K seeds after the selection: a weight soup and an ensemble, scored beside the best seed.

Keeping the best seed and discarding K - 1 trained models wastes them (Wortsman et al. 2022, "Model soups").
Two ways to use them without new training:

* **Soup** (one model, the cost of one at inference): the average of the seeds' weights,
  :math:`\theta_{soup} = \frac{1}{|S|} \sum_{s \in S} \pi_s(\theta_s)`, each member first aligned to the
  best seed up to permutation (and ReLU rescaling) symmetry (:func:`~lightning_landscape.landscape.align`;
  without it, averaging two permuted copies of one minimum destroys it). ``"uniform"``: all finished seeds.
  ``"greedy"``: the seeds in order of validation score, each kept only if the soup's validation ``monitor``
  improves, so the greedy soup is never worse on validation than the best seed (by construction; its test
  score can be). Floating buffers (BatchNorm statistics) are averaged like the weights, integer ones taken
  from the best seed. Written as ``soup.ckpt``: a plain ``state_dict`` (``torch.load(path,
  weights_only=True)`` then ``Module.load_state_dict``).
* **Ensemble** (m models at inference): the average prediction of the top-``m`` seeds by validation score,
  through the module's ``forward``: class probabilities (softmax of the outputs) for classifiers, outputs
  for regression.

Scores: the soup's ``monitor`` on validation and ``test_monitor`` on test come from the module's own
``validation_step``/``test_step`` (``Trainer.validate``/``Trainer.test``), comparable with every seed's
score. An ensemble has no ``validation_step``, so the best seed, the soup and the ensemble are also scored
by their averaged predictions on the same loaders (``"prediction"`` scores: the mean squared error for
regression; the negative log-likelihood of the averaged probabilities and the accuracy for classifiers). A
module is a classifier when its outputs have a last dimension above 1 and the targets are integers.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_landscape._namespace import namespace_of
from lightning_landscape.multiseed.checkpoints import load_weights
from lightning_landscape.multiseed.executors import SeedJob
from lightning_landscape.multiseed.result import MultiSeedResult, SeedRun

SOUP_CKPT = "soup.ckpt"
SoupKind = Literal["none", "uniform", "greedy"]


def average_states(states: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The mean of state dicts (float64 accumulation, cast back); non-floating entries from the first.

    Example:
        >>> average_states([{"w": torch.tensor([1.0])}, {"w": torch.tensor([3.0])}])["w"].tolist()
        [2.0]
    """
    if not states:
        raise ValueError("`states` must hold at least one state dict, got none")
    out = {}
    for name, first in states[0].items():
        if first.is_floating_point():
            total = torch.stack([s[name].detach().to(torch.float64) for s in states]).sum(0)
            out[name] = (total / len(states)).to(first.dtype)
        else:
            out[name] = first.detach().clone()
    return out


def _batches(loader: Any) -> list[Any]:
    """The batches of a dataloader or of a list of dataloaders."""
    from torch.utils.data import DataLoader

    loaders = loader if isinstance(loader, (list, tuple)) and isinstance(loader[0], DataLoader) else [loader]
    return [batch for each in loaders for batch in each]


def _split(batch: Any) -> tuple[Any, Tensor | None]:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        f"prediction scores need (inputs, targets) batches, got {type(batch).__name__}; the module's own "
        "validation_step still scores the soup"
    )


def prediction_scores(models: Sequence[nn.Module], batches: Iterable[Any]) -> dict[str, float]:
    """The scores of the average prediction of ``models`` on ``(inputs, targets)`` ``batches`` (a dataloader
    or a list; see the module docstring):
    ``{"mse": ...}`` for regression, ``{"nll": ..., "accuracy": ...}`` for classifiers.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> x = torch.randn(8, 2)
        >>> with torch.no_grad():
        ...     y = net(x)
        >>> prediction_scores([net], [(x, y)])
        {'mse': 0.0}
    """
    modes = [(m, m.training) for model in models for m in model.modules()]
    totals: dict[str, float] = {}
    count = 0
    try:
        for model in models:
            model.eval()
        with torch.no_grad():
            for batch in batches:
                x, y = _split(batch)
                outs = [model(x) for model in models]
                assert y is not None
                if outs[0].dim() > 1 and outs[0].shape[-1] > 1 and not y.is_floating_point():
                    prob = torch.stack([o.to(torch.float64).softmax(-1) for o in outs]).mean(0)
                    picked = prob.gather(-1, y.unsqueeze(-1)).squeeze(-1)
                    totals["nll"] = totals.get("nll", 0.0) - float(picked.clamp_min(1e-300).log().sum())
                    totals["accuracy"] = totals.get("accuracy", 0.0) + float((prob.argmax(-1) == y).sum())
                    count += y.numel()
                else:
                    mean = torch.stack([o.to(torch.float64) for o in outs]).mean(0)
                    diff = mean - y.to(torch.float64).reshape(mean.shape)
                    totals["mse"] = totals.get("mse", 0.0) + float(diff.pow(2).sum())
                    count += diff.numel()
    finally:
        for m, training in modes:
            m.train(training)
    return {k: v / max(count, 1) for k, v in totals.items()}


def _trainer(job: SeedJob, trainer_kwargs: dict[str, Any], model: Any) -> Any:
    return namespace_of(model).Trainer(
        accelerator=trainer_kwargs.get("accelerator", "auto"), devices=1,
        precision=trainer_kwargs.get("precision"), logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=job.root_dir,
    )  # fmt: skip


def loop_score(
    job: SeedJob,
    model: Any,
    stage: Literal["validate", "test"],
    data: Any,
    metric: str,
    kwargs: dict[str, Any],
) -> float | None:
    """``metric`` as the module's own ``validation_step``/``test_step`` logs it on ``data`` (a
    ``(datamodule, dataloaders)`` pair), ``None`` when not logged."""
    datamodule, loaders = data
    run = getattr(_trainer(job, kwargs, model), stage)
    results = run(model, dataloaders=loaders, datamodule=datamodule, verbose=False)
    values = [float(entry[metric]) for entry in results if metric in entry]
    return values[0] if values else None


class Members:
    """The finished seeds' models (best checkpoints, ``weights_only``), best first, in validation order."""

    def __init__(self, job: SeedJob, result: MultiSeedResult) -> None:
        from lightning_landscape.multiseed.vectorized.members import build_seeded

        runs = [r for r in result.finished if r.best_model_path and r.score is not None]
        ranked = sorted(runs, key=lambda r: float(r.score or 0.0), reverse=result.mode == "max")
        best = next(r for r in ranked if r.seed == result.best_seed)
        self.runs: list[SeedRun] = [best, *[r for r in ranked if r is not best]]
        (self.template,) = build_seeded(job.build_model, [best.seed])
        self.models = [load_weights(r.best_model_path, self.template) for r in self.runs]


def aligned_members(
    members: Members, align: str | None, batches: Sequence[Any]
) -> tuple[list[nn.Module], str | None]:
    """Every member aligned to the best seed (``align``: ``"weights"``, or ``"activations"`` on ``batches``),
    or as they are with the reason why not."""
    if align is None:
        return list(members.models), "align=None"
    from lightning_landscape.landscape import align as align_models

    best = members.models[0]

    def forward(model: nn.Module, batch: Any) -> Any:
        return model(_split(batch)[0])

    try:
        others = [align_models(best, m, align, batches, forward).model for m in members.models[1:]]  # type: ignore[arg-type]
    except (ValueError, TypeError) as err:
        return list(members.models), str(err)
    return [best, *others], None


def _soup_model(template: nn.Module, models: Sequence[nn.Module]) -> nn.Module:
    soup = copy.deepcopy(template)
    soup.load_state_dict(average_states([m.state_dict() for m in models]))
    return soup


def _better(a: float | None, b: float | None, mode: str) -> bool:
    if a is None or not math.isfinite(a):
        return False
    return b is None or (a < b if mode == "min" else a > b)


def build_soup(
    job: SeedJob, members: Members, aligned: list[nn.Module], kind: SoupKind, monitor: str, mode: str,
    val_data: Any, kwargs: dict[str, Any], best_score: float | None,
) -> tuple[nn.Module, list[int], float | None]:  # fmt: skip
    """The soup, its member seeds and its validation ``monitor`` (``best_score``: the best seed's)."""
    if kind == "uniform":
        soup = _soup_model(members.template, aligned)
        score = loop_score(job, soup, "validate", val_data, monitor, kwargs)
        return soup, [r.seed for r in members.runs], score
    chosen, score = [0], best_score
    for i in range(1, len(aligned)):
        candidate = _soup_model(members.template, [aligned[j] for j in [*chosen, i]])
        value = loop_score(job, candidate, "validate", val_data, monitor, kwargs)
        if _better(value, score, mode):
            chosen, score = [*chosen, i], value
    soup = _soup_model(members.template, [aligned[j] for j in chosen])
    return soup, [members.runs[j].seed for j in chosen], score


def _data(job: SeedJob, test_dataloaders: Any) -> tuple[Any, Any]:
    """``((datamodule, val loaders), (datamodule, test loaders) or None)`` for the loops, plus the loaders."""
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.utilities.model_helpers import is_overridden

    datamodule, _ = job.build_data()
    val: tuple[Any, Any] = (None, job.val_dataloaders) if datamodule is None else (datamodule, None)
    test: tuple[Any, Any] | None = None
    if test_dataloaders is not None:
        test = (None, test_dataloaders)
    elif datamodule is not None and is_overridden("test_dataloader", datamodule, LightningDataModule):
        test = (datamodule, None)
    return val, test


def _loader(data: Any, stage: str) -> Any:
    datamodule, loaders = data
    if datamodule is None:
        return loaders
    datamodule.setup("fit" if stage == "val" else "test")
    return datamodule.val_dataloader() if stage == "val" else datamodule.test_dataloader()


def soup_and_ensemble(
    job: SeedJob, result: MultiSeedResult, *, soup: SoupKind, ensemble: int, align: str | None,
    monitor: str, test_monitor: str, test_dataloaders: Any, trainer_kwargs: dict[str, Any],
) -> dict[str, Any] | None:  # fmt: skip
    """The ``MultiSeedTrainer`` step: the soup (``soup.ckpt``) and the ensemble, scored beside the best seed.

    Returns:
        The ``combined`` block of ``summary.json``: ``rows`` (one per model: ``name``, ``seeds``,
        ``forward_passes`` (inference cost in models), ``val``/``test`` (the module's own metrics, ``None``
        for the ensemble) and ``val_prediction``/``test_prediction`` scores), the soup's ``align_error``
        and ``path``; ``None`` when neither is asked for or fewer than two seeds finished.
    """
    if soup == "none" and ensemble == 0:
        return None
    members = Members(job, result)
    if len(members.runs) < 2:
        return None
    val_data, test_data = _data(job, test_dataloaders)
    loaders = {
        "val": _loader(val_data, "val"),
        "test": None if test_data is None else _loader(test_data, "test"),
    }

    def predicted(models: Sequence[nn.Module]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for stage, loader in loaders.items():
            try:
                out[f"{stage}_prediction"] = (
                    None if loader is None else prediction_scores(models, _batches(loader))
                )
            except (TypeError, ValueError, RuntimeError) as err:
                out[f"{stage}_prediction"], out["prediction_error"] = None, f"{type(err).__name__}: {err}"
        return out

    def test_score(model: nn.Module) -> float | None:
        return (
            None
            if test_data is None
            else loop_score(job, model, "test", test_data, test_monitor, trainer_kwargs)
        )

    best = members.models[0]
    rows: list[dict[str, Any]] = []
    block: dict[str, Any] = {"rows": rows, "monitor": monitor, "test_monitor": test_monitor}
    best_row = {"name": "best seed", "seeds": [members.runs[0].seed], "forward_passes": 1}
    best_val = loop_score(job, best, "validate", val_data, monitor, trainer_kwargs)
    best_row.update(val=best_val, test=test_score(best), **predicted([best]))
    rows.append(best_row)
    if soup != "none":
        batches = _batches(loaders["val"])[:4]
        aligned, block["align_error"] = aligned_members(members, align, batches)
        model, seeds, val = build_soup(
            job, members, aligned, soup, monitor, result.mode, val_data, trainer_kwargs, best_val
        )
        path = os.path.join(result.root_dir, SOUP_CKPT)
        tmp = os.path.join(result.root_dir, f".{SOUP_CKPT}.tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
        block["path"] = SOUP_CKPT
        row = {
            "name": f"{soup} soup",
            "seeds": seeds,
            "forward_passes": 1,
            "val": val,
            "test": test_score(model),
        }
        rows.append({**row, **predicted([model])})
    if ensemble > 0:
        m = min(ensemble, len(members.models))
        row = {
            "name": f"ensemble of top {m}",
            "seeds": [r.seed for r in members.runs[:m]],
            "forward_passes": m,
        }
        rows.append({**row, "val": None, "test": None, **predicted(members.models[:m])})
    return block


__all__ = ["SOUP_CKPT", "average_states", "prediction_scores", "soup_and_ensemble"]
