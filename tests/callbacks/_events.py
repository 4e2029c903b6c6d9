"""Reading TensorBoard event files back: scalars, tag lists and the custom-scalars layout."""

from __future__ import annotations

from pathlib import Path


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


def read_layouts(log_dir: str | Path) -> list[dict[str, list[str]]]:
    """Every custom-scalars layout written under ``log_dir`` as ``{category: [chart titles]}``."""
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
            layouts.append({c.title: [chart.title for chart in c.chart] for c in layout.category})
    return layouts


def read_layout_categories(log_dir: str | Path) -> list[list[str]]:
    """Titles of the categories of every custom-scalars layout written under ``log_dir``."""
    return [list(layout) for layout in read_layouts(log_dir)]
