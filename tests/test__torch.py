"""Each private torch member of lightning_landscape/_torch.py still exists and does what the package needs."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from lightning_landscape import _torch


def test_base_classes_cover_the_layers() -> None:
    assert isinstance(nn.BatchNorm1d(2), _torch.BatchNormBase)
    assert isinstance(nn.SyncBatchNorm(2), _torch.BatchNormBase)
    assert not isinstance(nn.InstanceNorm1d(2), _torch.BatchNormBase)
    assert isinstance(nn.InstanceNorm1d(2), _torch.NormBase)
    assert isinstance(nn.Dropout2d(0.1), _torch.DropoutBase)
    assert not isinstance(nn.LayerNorm(2), _torch.NormBase)


def test_pytree_helpers() -> None:
    batch = {"x": torch.ones(2), "y": (torch.zeros(3), 5)}
    leaves = _torch.tree_leaves(batch)
    assert [type(leaf) for leaf in leaves] == [torch.Tensor, torch.Tensor, int]
    doubled = _torch.tree_map(lambda t: t * 2 if isinstance(t, torch.Tensor) else t, batch)
    assert torch.equal(doubled["x"], torch.full((2,), 2.0))


def test_buffer_and_parameter_slots() -> None:
    bn = nn.BatchNorm1d(3)
    slots = dict(_torch.named_buffer_slots(bn))
    assert set(slots) == {"running_mean", "running_var", "num_batches_tracked"}
    new = torch.full((3,), 7.0)
    _torch.set_buffer(bn, "running_mean", new)
    assert bn.running_mean is new and "running_mean" in bn.state_dict()
    lin = nn.Linear(2, 2)
    param = nn.Parameter(torch.zeros(2, 2))
    _torch.set_parameter(lin, "weight", param)
    assert lin.weight is param


def test_foreach_norm_matches_linalg() -> None:
    tensors = [torch.randn(4), torch.randn(2, 3)]
    for order in (2.0, 1.0, float("inf")):
        got = _torch.foreach_norm(tensors, order)
        want = [torch.linalg.vector_norm(t, order) for t in tensors]
        assert all(torch.allclose(g, w) for g, w in zip(got, want, strict=True))


def test_compiled_wrapper_detection() -> None:
    net = nn.Linear(2, 2)
    compiled = torch.compile(net)
    assert _torch.is_compiled_wrapper(compiled) and not _torch.is_compiled_wrapper(net)
    names = [name for name, _ in nn.Sequential(compiled).named_parameters()]
    assert all(_torch.COMPILED_PREFIX in name for name in names)


def test_is_batched_tensor_inside_vmap() -> None:
    assert _torch.is_batched_tensor is not None
    seen: list[bool] = []

    def f(x: torch.Tensor) -> torch.Tensor:
        seen.append(_torch.is_batched_tensor(x))  # type: ignore[misc]
        return x * 2

    torch.func.vmap(f)(torch.ones(3, 2))
    assert seen == [True] and not _torch.is_batched_tensor(torch.ones(2))  # type: ignore[misc]


def test_version_counter_moves_on_in_place_writes_only() -> None:
    x = torch.zeros(3)
    before = _torch.version_counter(x)
    _ = x + 1
    assert _torch.version_counter(x) == before
    x.add_(1)
    assert _torch.version_counter(x) > before


def test_compile_support_and_configs() -> None:
    assert isinstance(_torch.dynamo_supported(), bool)
    assert isinstance(_torch.has_triton(), bool)
    assert hasattr(_torch.functorch_config(), "aggressive_recomputation")


def test_fresh_iterator_is_independent() -> None:
    loader = DataLoader(TensorDataset(torch.arange(6.0)), batch_size=2)
    first = _torch.fresh_iterator(loader)
    second = _torch.fresh_iterator(loader)
    assert first is not second
    assert torch.equal(next(first)[0], next(second)[0])
    _torch.shutdown_workers(first)


def test_tensorboard_file_writer(tmp_path) -> None:
    writer = SummaryWriter(log_dir=str(tmp_path))
    try:
        assert hasattr(_torch.tensorboard_file_writer(writer), "add_summary")
    finally:
        writer.close()
