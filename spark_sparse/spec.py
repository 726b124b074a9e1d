"""What one convolution is (``ConvSpec``) and the dtype it computes in: below every kernel and backend."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

Pair = Tuple[int, int]


@dataclass(frozen=True)
class ConvSpec:
    """Everything about a k×k convolution a kernel or backend needs, besides weights and features."""
    in_channels: int
    out_channels: int
    kernel: Pair
    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int = 1

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on ``x`` would run in here (autocast's, when autocast is on)."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev) and x.is_floating_point():
        return torch.get_autocast_dtype(dev)
    return x.dtype
