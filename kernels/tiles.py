"""Halo tiles: each visible patch's block at one stride, with a border of its neighbours' sites.

SparK's masks are whole patches, so at stride s every visible patch is an r×r block of sites
(r = patch/s). A k×k stride-1 convolution on the active sites equals a dense, *unpadded* k×k
convolution on each block grown by a halo of h = k//2 sites on every side, where the halo holds
the visible neighbours' sites and zeros where the neighbour is masked or outside the image. The
dense convolution then runs as one batched cuDNN / oneDNN call on (P, C, r+2h, r+2h) tiles.

This module is that gather, usable by any tile-based kernel (depthwise, dense k×k, max-pool):

    tiles = gather_tiles(x, halo)          # (P, C, T, T), T = r + 2·halo, channels-last memory
    y = F.conv2d(tiles, w, groups=...)     # no padding: (P, C', r, r)
    out = tiles_to_features(y)             # (N, C'), the geometry's site order

A strided window reads a border of different widths before and after the block (a 3×3/2 conv
with padding 1 reads one site above and left of its patch, none below and right): ``halo`` may be
a pair (before, after), see ``window_halo``.

The gather is differentiable. Its backward reads every site's copies through the inverse table
(a gather and a sum, no scatter-add), so the gradient does not depend on thread count or device.
One table per (stride, halo) is built per batch and cached in the Geometry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple, Union

import torch

from ..features import SparseFeatures
from ..geometry import Geometry
from .gather import gather_rows


@dataclass(frozen=True)
class HaloTileTable:
    """Where each pixel of every halo tile reads from, and the inverse.

    ``index[p, i, j]`` is the feature row at pixel (i, j) of tile p (pixel (lo, lo) is the patch's
    top-left site), or ``num_sites`` where that pixel is masked or outside the image.
    ``inverse[n, m]`` lists the flat tile pixels (p·T·T + i·T + j) that read row n, padded with
    ``num_pixels``; every row has at least one (its own place in its own tile).
    """
    index: torch.Tensor
    inverse: torch.Tensor
    r: int
    lo: int
    hi: int
    num_sites: int

    @property
    def size(self) -> int:
        """Tile side T = lo + r + hi."""
        return self.r + self.lo + self.hi

    @property
    def num_tiles(self) -> int:
        return self.index.shape[0]

    @property
    def num_pixels(self) -> int:
        return self.index.numel()


def window_halo(kernel: int, stride: int, padding: int, dilation: int = 1) -> Tuple[int, int]:
    """The border (before, after) a patch's block needs so that an unpadded conv/pool with these
    settings yields exactly the patch's r/stride outputs: it reads input sites
    ``stride·o − padding + dilation·k`` for outputs o in [0, r/stride)."""
    return padding, dilation * (kernel - 1) - padding - stride + 1


def _pair(halo: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    lo, hi = (halo, halo) if isinstance(halo, int) else (int(halo[0]), int(halo[1]))
    if lo < 0 or hi < 0:
        raise ValueError(f"halo must be >= 0 on both sides, got {halo}")
    return lo, hi


def halo_tile_table(geometry: Geometry, stride: int, halo: Union[int, Tuple[int, int]]) -> HaloTileTable:
    """The (cached) halo tile table of ``geometry`` at ``stride``; ``halo`` = h or (before, after)."""
    lo, hi = _pair(halo)
    return geometry.cached(("halo_tiles", stride, lo, hi), lambda: _build_table(geometry, stride, lo, hi))


def _build_table(geometry: Geometry, stride: int, lo: int, hi: int) -> HaloTileTable:
    level = geometry.level(stride)
    r, n, size = level.r, level.num_sites, level.r + lo + hi
    padded = level.grid.new_full((geometry.batch, level.height + lo + hi, level.width + lo + hi), n)
    padded[:, lo:lo + level.height, lo:lo + level.width] = level.grid
    p = geometry.patches
    offs = torch.arange(size, device=geometry.device)
    ys = (p[:, 1] * r).view(-1, 1, 1) + offs.view(1, size, 1)
    xs = (p[:, 2] * r).view(-1, 1, 1) + offs.view(1, 1, size)
    index = padded[p[:, 0].view(-1, 1, 1), ys, xs].contiguous()
    return HaloTileTable(index, _inverse(index.view(-1), n), r, lo, hi, n)


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
    def forward(ctx, features: torch.Tensor, table: HaloTileTable, fill: float):
        ctx.table = table
        return gather_rows(features, table.index, fill)

    @staticmethod
    def backward(ctx, grad_tiles):
        table: HaloTileTable = ctx.table
        flat = grad_tiles.reshape(table.num_pixels, grad_tiles.shape[-1])  # not -1: P may be 0 (all masked)
        return gather_rows(flat, table.inverse).sum(1), None, None


def gather_tiles(x: SparseFeatures, halo: Union[int, Tuple[int, int]], channels_last_shape: bool = False,
                 fill: float = 0.0) -> torch.Tensor:
    """Every visible patch's block with a ``halo`` of neighbour sites (``fill`` where masked or outside).

    ``halo`` is h on every side or (before, after). Returns (P, C, T, T) in ``torch.channels_last``
    memory format (what a dense conv wants), or with ``channels_last_shape=True`` the same memory
    as a (P, T, T, C) tensor. Differentiable. ``fill=-inf`` makes a max-pool ignore those pixels.
    """
    table = halo_tile_table(x.geometry, x.stride, halo)
    tiles = _GatherTiles.apply(x.features.contiguous(), table, fill)
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
