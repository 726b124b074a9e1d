"""SparseFeatures: the (N_active, C) feature matrix of one stride, plus the geometry it lives on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .geometry import Geometry, Level


@dataclass
class SparseFeatures:
    """Features of the active sites at ``stride`` in the geometry's patch-major order.

    ``features`` is (N, C); viewed as (P, r, r, C) it is a channels-last batch of per-patch tiles.
    """
    features: torch.Tensor
    geometry: Geometry
    stride: int

    @property
    def level(self) -> Level:
        return self.geometry.level(self.stride)

    @property
    def channels(self) -> int:
        return self.features.shape[1]

    def replace(self, features: torch.Tensor, stride: int = None) -> "SparseFeatures":
        """Same geometry, new features (and, for strided layers, a new stride)."""
        return SparseFeatures(features, self.geometry, self.stride if stride is None else stride)

    def tiles(self) -> torch.Tensor:
        """(P, r, r, C) view of the features: one dense block per visible patch."""
        r = self.level.r
        return self.features.view(self.geometry.num_patches, r, r, self.channels)

    def dense(self, fill: Optional[torch.Tensor] = None,
              memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """Scatter to a dense (B, C, H/s, W/s) map with ``fill`` (C values; zeros when None) at masked
        sites (differentiable, also in ``fill``).

        The map is built channels-last, where each visible patch is one r×r×C block, in one copy: with
        ``memory_format=torch.channels_last`` the result is a view of it, with the default contiguous
        format a second copy.
        """
        g, r, c = self.geometry, self.level.r, self.channels
        h, w = g.grid_hw
        if fill is None:
            out = self.features.new_zeros(g.batch, h, r, w, r, c)
        else:
            out = fill.reshape(1, 1, 1, 1, 1, c).to(self.features.dtype).expand(g.batch, h, r, w, r, c).clone()
        p = g.patches
        out[p[:, 0], p[:, 1], :, p[:, 2]] = self.tiles()
        return out.view(g.batch, h * r, w * r, c).permute(0, 3, 1, 2).contiguous(memory_format=memory_format)

    @classmethod
    def from_dense(cls, x: torch.Tensor, geometry: Geometry, stride: int) -> "SparseFeatures":
        """Gather the active sites of a dense (B, C, H/s, W/s) map (differentiable)."""
        r = geometry.patch_size // stride
        b, c = x.shape[:2]
        h, w = geometry.grid_hw
        if tuple(x.shape[2:]) != (h * r, w * r):
            raise ValueError(f"map of shape {tuple(x.shape)} does not match stride {stride} of a {h}x{w} patch grid")
        blocks = x.view(b, c, h, r, w, r).permute(0, 2, 4, 3, 5, 1)
        p = geometry.patches
        tiles = blocks[p[:, 0], p[:, 1], p[:, 2]]
        return cls(tiles.reshape(-1, c), geometry, stride)
