"""Fixtures of the callback tests: reading TensorBoard event files back and dense float64 Hessians."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))


def read_scalars(log_dir: str | Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of every scalar in the TensorBoard event files under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def read_event_tags(log_dir: str | Path) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: dict[str, list[str]] = {}
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"histograms": 0, "tensors": 0})
        acc.Reload()
        for kind, names in acc.Tags().items():
            if isinstance(names, list):
                tags.setdefault(kind, []).extend(names)
    return tags


def dense_hessian(model: nn.Module, loss_fn: Any, batches: list[Any]) -> Tensor:
    """The float64 Hessian of the batch-size-weighted mean of ``loss_fn`` w.r.t. the trainable parameters, in
    eval mode, by ``torch.func.hessian`` over a flat parameter vector."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p.detach().to(torch.float64) for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in params]
    flat = torch.cat([p.reshape(-1) for p in params])
    sizes = torch.tensor([float(b[0].shape[0]) for b in batches], dtype=torch.float64)
    weights = sizes / sizes.sum()
    was_training = model.training
    model.eval()

    def total(v: Tensor) -> Tensor:
        chunks, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            n = shape.numel()
            chunks[name] = v[offset : offset + n].view(shape)
            offset += n
        out = torch.zeros((), dtype=torch.float64)
        for w, batch in zip(weights, batches, strict=True):
            with torch.nn.utils.stateless._reparametrize_module(model, chunks):
                out = out + w * loss_fn(model, batch)
        return out

    try:
        return torch.func.hessian(total)(flat)
    finally:
        model.train(was_training)


@pytest.fixture
def trainer_kwargs(tmp_path: Path) -> dict[str, Any]:
    return {
        "default_root_dir": tmp_path,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
    }


def read_layout_categories(log_dir: str | Path) -> list[list[str]]:
    """Titles of the categories of every custom-scalars layout written under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    layouts = []
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"tensors": 0})
        acc.Reload()
        if "custom_scalars__config__" not in acc.Tags()["tensors"]:
            continue
        for event in acc.Tensors("custom_scalars__config__"):
            layout = layout_pb2.Layout()
            layout.ParseFromString(event.tensor_proto.string_val[0])
            layouts.append([c.title for c in layout.category])
    return layouts
