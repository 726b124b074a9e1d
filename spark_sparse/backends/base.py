"""The interface every convolution backend implements."""
from __future__ import annotations

from typing import Optional

import torch

from ..geometry import Geometry
from ..spec import ConvSpec


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
