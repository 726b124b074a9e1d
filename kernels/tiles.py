"""Halo tiles: each visible patch's block at one stride, with a border of its neighbours' sites.

SparK's masks are whole patches, so at stride s every visible patch is an r×r block of sites
(r = patch/s). A k×k stride-1 convolution on the active sites equals a dense, *unpadded* k×k
convolution on each block grown by a halo of h = k//2 sites on every side, where the halo holds
the visible neighbours' sites and zeros where the neighbour is masked or outside the image. The
dense convolution then runs as one batched cuDNN / oneDNN call on (P, C, r+2h, r+2h) tiles.

This module is that gather, usable by any tile-based kernel (depthwise now, dense k×k later):

    tiles = gather_tiles(x, halo)          # (P, C, T, T), T = r + 2·halo, channels-last memory
    y = F.conv2d(tiles, w, groups=...)     # no padding: (P, C', r, r)
    out = tiles_to_features(y)             # (N, C'), the geometry's site order

The gather is differentiable. Its backward reads every site's copies through the inverse table
(a gather and a sum, no scatter-add), so the gradient does not depend on thread count or device.
One table per (stride, halo) is built per batch and cached in the Geometry.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..features import SparseFeatures
from ..geometry import Geometry
from .gather import gather_rows


@dataclass(frozen=True)
class HaloTileTable:
    """Where each pixel of every halo tile reads from, and the inverse.

    ``index[p, i, j]`` is the feature row at pixel (i, j) of tile p (pixel (h, h) is the patch's
    top-left site), or ``num_sites`` where that pixel is masked or outside the image.
    ``inverse[n, m]`` lists the flat tile pixels (p·T·T + i·T + j) that read row n, padded with
    ``num_pixels``; every row has at least one (its own place in its own tile).
    """
    index: torch.Tensor
    inverse: torch.Tensor
    r: int
    halo: int
    num_sites: int

    @property
    def size(self) -> int:
        """Tile side T = r + 2·halo."""
        return self.r + 2 * self.halo

    @property
    def num_tiles(self) -> int:
        return self.index.shape[0]

    @property
    def num_pixels(self) -> int:
        return self.index.numel()


def halo_tile_table(geometry: Geometry, stride: int, halo: int) -> HaloTileTable:
    """The (cached) halo tile table of ``geometry`` at ``stride``."""
    if halo < 0:
        raise ValueError(f"halo must be >= 0, got {halo}")
    return geometry.cached(("halo_tiles", stride, halo), lambda: _build_table(geometry, stride, halo))


def _build_table(geometry: Geometry, stride: int, halo: int) -> HaloTileTable:
    level = geometry.level(stride)
    r, n, size = level.r, level.num_sites, level.r + 2 * halo
    padded = level.grid.new_full((geometry.batch, level.height + 2 * halo, level.width + 2 * halo), n)
    padded[:, halo:halo + level.height, halo:halo + level.width] = level.grid
    p = geometry.patches
    offs = torch.arange(size, device=geometry.device)
    ys = (p[:, 1] * r).view(-1, 1, 1) + offs.view(1, size, 1)
    xs = (p[:, 2] * r).view(-1, 1, 1) + offs.view(1, 1, size)
    index = padded[p[:, 0].view(-1, 1, 1), ys, xs].contiguous()
    return HaloTileTable(index, _inverse(index.view(-1), n), r, halo, n)


def _inverse(flat: torch.Tensor, num_sites: int) -> torch.Tensor:
    """(num_sites, M): the positions in ``flat`` holding each row, padded with ``len(flat)``."""
    pos = (flat < num_sites).nonzero().squeeze(1)
    rows = flat[pos]
    order = torch.argsort(rows, stable=True)
    rows, pos = rows[order], pos[order]
    counts = torch.bincount(rows, minlength=num_sites)
    width = int(counts.max()) if num_sites else 0
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(rows.numel(), device=flat.device) - first[rows]
    inverse = torch.full((num_sites, width), flat.numel(), dtype=torch.long, device=flat.device)
    inverse[rows, slot] = pos
    return inverse


class _GatherTiles(torch.autograd.Function):
    """(N, C) features → (P, T, T, C) tiles; backward sums each row's copies via the inverse table."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, table: HaloTileTable):
        ctx.table = table
        return gather_rows(features, table.index)

    @staticmethod
    def backward(ctx, grad_tiles):
        table: HaloTileTable = ctx.table
        flat = grad_tiles.reshape(table.num_pixels, -1)
        return gather_rows(flat, table.inverse).sum(1), None


def gather_tiles(x: SparseFeatures, halo: int, channels_last_shape: bool = False) -> torch.Tensor:
    """Every visible patch's block with a ``halo`` of neighbour sites (zeros where masked or outside).

    Returns (P, C, T, T) in ``torch.channels_last`` memory format (what a dense conv wants), or
    with ``channels_last_shape=True`` the same memory as a (P, T, T, C) tensor. Differentiable.
    """
    table = halo_tile_table(x.geometry, x.stride, halo)
    tiles = _GatherTiles.apply(x.features.contiguous(), table)
    return tiles if channels_last_shape else tiles.permute(0, 3, 1, 2)


def tiles_to_features(tiles: torch.Tensor, halo: int = 0, channels_last_shape: bool = False) -> torch.Tensor:
    """The interiors of (P, C, T, T) tiles (or (P, T, T, C)) as (N, C) rows in site order.

    ``halo`` is the border to drop: 0 for the output of an unpadded conv on halo tiles (already
    r×r), the gather's halo to get back the features a tile was gathered from.
    """
    if not channels_last_shape:
        tiles = tiles.permute(0, 2, 3, 1)
    if halo:
        tiles = tiles[:, halo:-halo, halo:-halo, :]
    return tiles.reshape(-1, tiles.shape[-1])
