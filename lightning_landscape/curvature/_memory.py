"""How much memory a probe may use: free bytes of a device and the bytes autograd saves for backward."""

from __future__ import annotations

import os

import torch
from torch import Tensor

#: Free bytes assumed where the operating system does not say (non-POSIX).
FALLBACK_FREE_BYTES = 4 * 1024**3


def available_bytes(device: torch.device) -> int:
    """Free bytes on ``device`` (CUDA: ``mem_get_info``; CPU: available physical pages)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return FALLBACK_FREE_BYTES


class SavedBytes:
    """Counts the bytes autograd saves for backward (deduplicated by storage) while active."""

    def __init__(self) -> None:
        self.nbytes = 0
        self._seen: set[int] = set()

    def pack(self, tensor: Tensor) -> Tensor:
        try:
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key not in self._seen:
                self._seen.add(key)
                self.nbytes += storage.nbytes()
        except (RuntimeError, NotImplementedError):  # pragma: no cover - exotic tensor subclasses
            self.nbytes += tensor.numel() * tensor.element_size()
        return tensor

    @staticmethod
    def unpack(tensor: Tensor) -> Tensor:
        return tensor
