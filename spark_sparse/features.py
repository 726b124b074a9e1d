"""SparseFeatures: the (N_active, C) feature matrix of one stride, plus the geometry it lives on."""
from __future__ import annotations

from dataclasses import dataclass

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

    def dense(self) -> torch.Tensor:
        """Scatter to a dense (B, C, H/s, W/s) map with zeros at masked sites (differentiable).

        The map is in channels-last memory: the rows are copied once, in place into the zeros,
        with no layout change after (a dense conv or BN reads channels-last as fast as NCHW).
        """
        g = self.geometry
        r = self.level.r
        h, w = g.grid_hw
        out = self.features.new_zeros(g.batch, h, r, w, r, self.channels)
        p = g.patches
        out.permute(0, 1, 3, 2, 4, 5).index_put_((p[:, 0], p[:, 1], p[:, 2]), self.tiles())
        return out.view(g.batch, h * r, w * r, self.channels).permute(0, 3, 1, 2)

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
