"""The ``tiles`` backend: each visible patch's block plus its halo through one dense conv
(kernels/tile_conv.py), for the k×k convs whose halo costs less than the rulebook's gathers."""
from __future__ import annotations

from typing import Optional

import torch

from ..features import SparseFeatures
from ..geometry import Geometry
from ..kernels.tile_conv import tile_conv, tiles_unsupported
from ..spec import ConvSpec
from .base import ConvBackend


class TilesBackend(ConvBackend):
    name = "tiles"

    def unsupported(self, spec: ConvSpec, x: torch.Tensor) -> Optional[str]:
        return tiles_unsupported(spec)

    def conv(self, x: torch.Tensor, weight: torch.Tensor, geometry: Geometry, in_stride: int,
             spec: ConvSpec) -> torch.Tensor:
        return tile_conv(SparseFeatures(x, geometry, in_stride), weight, spec)
