"""The interface every convolution backend implements, and the spec of one convolution."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..geometry import Geometry

Pair = Tuple[int, int]


@dataclass(frozen=True)
class ConvSpec:
    """Everything about a k×k convolution a backend needs, besides weights and features."""
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

    @property
    def num_offsets(self) -> int:
        return self.kernel[0] * self.kernel[1]


class ConvBackend:
    """A way to run a k×k convolution from the active sites of one stride to those of the next.

    ``conv`` takes (N_in, C_in) features and the dense layer's weight in its own layout
    (C_out, C_in/groups, kh, kw); any layout change happens here, at call time.
    """
    name = "base"

    def unsupported(self, spec: ConvSpec, x: torch.Tensor) -> Optional[str]:
        """Why this backend cannot run ``spec`` on ``x`` (None when it can)."""
        return None

    def conv(self, x: torch.Tensor, weight: torch.Tensor, geometry: Geometry, in_stride: int,
             spec: ConvSpec) -> torch.Tensor:
        raise NotImplementedError


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on ``x`` would run in here (autocast's, when autocast is on)."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev) and x.is_floating_point():
        return torch.get_autocast_dtype(dev)
    return x.dtype
