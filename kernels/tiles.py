"""Halo tiles: runs of visible patches at one stride, with a border of their neighbours' sites.

SparK's masks are whole patches, so at stride s every visible patch is an r×r block of sites
(r = patch/s). A k×k convolution (or pool) on the active sites equals a dense, *unpadded* one on
each block grown by the border its window reads, where the border holds the visible neighbours'
sites and zeros where the neighbour is masked or outside the image. The dense op then runs as one
batched cuDNN / oneDNN call per tile shape.

Horizontally adjacent visible patches of one image share that border: a run of k patches is one
tile of (r + lo + hi) × (k·r + lo + hi) sites instead of k tiles of (r + lo + hi)², so the gather
copies less, the conv's input gradient computes fewer halo pixels, and the dense kernels see wider
images. Runs are cut into power-of-two lengths (a run of 7 is 4 + 2 + 1) up to ``max_run``, so the
dense kernels see at most log2(max_run) + 1 distinct shapes per layer::

    tiles = gather_tiles(x, halo)                            # one (P_k, C, T, T_k) per run length k
    y = [F.conv2d(t, w, stride=s) for t in tiles.tensors]    # no padding: (P_k, C', r/s, k·r/s)
    out = tiles.assemble(y)                                  # (N', C') in the geometry's site order

A strided window reads a border of different widths before and after the block (a 3×3/2 conv
with padding 1 reads one site above and left of its patch, none below and right): ``halo`` may be
a pair (before, after), see ``window_halo``.

Gather and assembly are differentiable, and neither backward scatter-adds: the gather's backward
reads every site's copies through the inverse table (a gather and a sum), the assembly's is a
gather by the same permutation, so gradients do not depend on thread count or device. Tables are
built once per batch (vectorised, cached in the Geometry) and reused by forward and backward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import torch

from ..features import SparseFeatures
from ..geometry import Geometry
from .gather import gather_rows, take_rows, with_fill_rows

# Longest run of patches one tile holds (a power of two). At 224² a row has 7 patches, so 4 gives
# run lengths 1, 2 and 4: three conv shapes per layer.
MAX_RUN = 4


@dataclass(frozen=True)
class TileBucket:
    """The tiles of one run length: ``count`` tiles of ``run`` patches each.

    ``index`` (count, H, W): the feature row each tile pixel reads, ``num_sites`` where that pixel
    is masked, ``num_sites + 1`` where it is outside the image. ``first_patch`` (count,): the
    patch (in geometry order) at the run's left end; its patches are consecutive in that order.
    """
    run: int
    index: torch.Tensor
    first_patch: torch.Tensor

    @property
    def count(self) -> int:
        return self.index.shape[0]


@dataclass(frozen=True)
class TileTable:
    """Every visible patch in exactly one tile, tiles grouped by run length (shortest first).

    ``inverse[n, m]`` lists the flat pixels (over all buckets, in order) that read row n, padded
    with ``num_pixels``; every row has at least one (its own place in its own tile).
    """
    buckets: Tuple[TileBucket, ...]
    inverse: torch.Tensor
    stride: int
    r: int
    lo: int
    hi: int
    max_run: int
    num_sites: int

    @property
    def num_pixels(self) -> int:
        return sum(b.index.numel() for b in self.buckets)


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


def tile_table(geometry: Geometry, stride: int, halo: Union[int, Tuple[int, int]],
               max_run: int = MAX_RUN) -> TileTable:
    """The (cached) tile table of ``geometry`` at ``stride``; ``halo`` = h or (before, after);
    ``max_run`` = 1 gives one square tile per patch."""
    lo, hi = _pair(halo)
    if max_run < 1 or max_run & (max_run - 1):
        raise ValueError(f"max_run must be a power of two >= 1, got {max_run}")
    return geometry.cached(("tiles", stride, lo, hi, max_run),
                           lambda: _build_table(geometry, stride, lo, hi, max_run))


def run_pieces(patches: torch.Tensor, max_run: int) -> List[Tuple[int, torch.Tensor]]:
    """Cut the horizontal runs of visible patches into power-of-two pieces of at most ``max_run``.

    ``patches`` (P, 3) are (b, py, px) rows in row-major order, so a run is a stretch of
    consecutive rows. A run of L patches gives L // max_run pieces of ``max_run``, then one piece
    per set bit of L % max_run, longest first. Returns [(run length, first patch of each piece)],
    shortest run length first, pieces in patch order.
    """
    num = patches.shape[0]
    dev = patches.device
    if num == 0:
        return []
    same_row = torch.zeros(num, dtype=torch.bool, device=dev)
    same_row[1:] = ((patches[1:, :2] == patches[:-1, :2]).all(1)) & (patches[1:, 2] == patches[:-1, 2] + 1)
    starts = (~same_row).nonzero().squeeze(1)
    lengths = torch.diff(starts, append=torch.tensor([num], device=dev))
    full = lengths // max_run
    pieces = []
    if max_run > 1:
        rest = lengths % max_run
        bit = max_run // 2
        while bit:
            has = (rest & bit) > 0
            # longest first: this piece starts after the full pieces and the higher bits of the rest
            offset = full * max_run + (rest & ~(2 * bit - 1))
            pieces.append((bit, (starts + offset)[has]))
            bit //= 2
    # full pieces: run start + j·max_run for j < full
    reps = torch.repeat_interleave(torch.arange(starts.numel(), device=dev), full)
    within = torch.arange(reps.numel(), device=dev) - torch.repeat_interleave(torch.cumsum(full, 0) - full, full)
    pieces.append((max_run, starts[reps] + within * max_run))
    pieces = sorted(((k, torch.sort(first).values) for k, first in pieces if first.numel()), key=lambda kv: kv[0])
    return pieces


def _build_table(geometry: Geometry, stride: int, lo: int, hi: int, max_run: int) -> TileTable:
    level = geometry.level(stride)
    r, n = level.r, level.num_sites
    padded = level.grid.new_full((geometry.batch, level.height + lo + hi, level.width + lo + hi), n + 1)
    padded[:, lo:lo + level.height, lo:lo + level.width] = level.grid
    p = geometry.patches
    buckets = []
    for run, first in run_pieces(p, max_run):
        height, width = r + lo + hi, run * r + lo + hi
        start = p[first]
        ys = (start[:, 1] * r).view(-1, 1, 1) + torch.arange(height, device=p.device).view(1, height, 1)
        xs = (start[:, 2] * r).view(-1, 1, 1) + torch.arange(width, device=p.device).view(1, 1, width)
        buckets.append(TileBucket(run, padded[start[:, 0].view(-1, 1, 1), ys, xs].contiguous(), first))
    if not buckets:  # no visible patch: one empty bucket keeps every op (and its autograd) well-defined
        buckets.append(TileBucket(1, p.new_zeros(0, r + lo + hi, r + lo + hi), p.new_zeros(0)))
    flat = torch.cat([b.index.reshape(-1) for b in buckets])
    return TileTable(tuple(buckets), _inverse(flat, n), stride, r, lo, hi, max_run, n)


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


def output_sites(table: TileTable, step: int, geometry: Geometry) -> Tuple[torch.Tensor, ...]:
    """Per bucket, the output row (at stride ``step`` coarser) of every pixel of an unpadded op's
    output (count, r/step, run·r/step) in row-major order: where ``assemble`` puts it. Cached."""
    def build():
        ro = table.r // step
        sites = []
        for b in table.buckets:
            i = torch.arange(ro, device=b.first_patch.device).view(1, ro, 1)
            j = torch.arange(b.run * ro, device=b.first_patch.device).view(1, 1, -1)
            patch = b.first_patch.view(-1, 1, 1) + j // ro
            sites.append((patch * ro * ro + i * ro + j % ro).reshape(-1))
        return tuple(sites)
    return geometry.cached(("tile_outputs", table.stride, table.lo, table.hi, table.max_run, step), build)


class _GatherTiles(torch.autograd.Function):
    """(N, C) features → one (P_k, H, W_k, C) tensor per bucket; backward sums each row's copies."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, table: TileTable, masked_fill: float, border_fill: float):
        ctx.table = table
        rows = with_fill_rows(features, (masked_fill, border_fill))
        return tuple(take_rows(rows, b.index) for b in table.buckets)

    @staticmethod
    def backward(ctx, *grads):
        table: TileTable = ctx.table
        flat = torch.cat([g.flatten(0, -2) for g in grads])  # not reshape(-1, C): a bucket may be empty
        return gather_rows(flat, table.inverse).sum(1), None, None, None


class _Assemble(torch.autograd.Function):
    """Per-bucket output rows → (N, C) in site order: each row lands once (a permutation), so the
    backward is a gather by the same indices."""

    @staticmethod
    def forward(ctx, sites: Tuple[torch.Tensor, ...], num_rows: int, *rows: torch.Tensor):
        ctx.sites = sites
        out = rows[0].new_empty(num_rows, rows[0].shape[1])
        for index, part in zip(sites, rows):
            out.index_copy_(0, index, part)
        return out

    @staticmethod
    def backward(ctx, grad):
        return (None, None) + tuple(grad.index_select(0, index) for index in ctx.sites)


@dataclass
class Tiles:
    """The gathered tiles of one layer: ``tensors[i]`` is (P_k, C, H, W_k), channels-last memory."""
    tensors: List[torch.Tensor]
    table: TileTable
    geometry: Geometry

    def assemble(self, outputs: Sequence[torch.Tensor], step: int = 1) -> torch.Tensor:
        """The (N', C') rows, in site order, of an unpadded op's per-bucket outputs (P_k, C', r/step,
        run·r/step) — the active sites ``step`` times coarser than the tiles' stride."""
        if len(outputs) != len(self.table.buckets):
            raise ValueError(f"expected {len(self.table.buckets)} outputs (one per bucket), got {len(outputs)}")
        rows = [y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]) for y in outputs]
        if len(rows) == 1 and self.table.buckets[0].run == 1:
            return rows[0]  # one square tile per patch: the outputs are already in site order
        sites = output_sites(self.table, step, self.geometry)
        return _Assemble.apply(sites, sum(s.numel() for s in sites), *rows)


def gather_tiles(x: SparseFeatures, halo: Union[int, Tuple[int, int]], max_run: int = MAX_RUN,
                 masked_fill: float = 0.0, border_fill: float = 0.0) -> Tiles:
    """Every run of visible patches with a ``halo`` of neighbour sites, as channels-last tiles.

    ``halo`` is h on every side or (before, after). Pixels on masked patches read ``masked_fill``,
    pixels outside the image ``border_fill`` (a max-pool pads with −inf there, and SparK's masked
    reference holds 0 at masked sites). Differentiable.
    """
    table = tile_table(x.geometry, x.stride, halo, max_run)
    parts = _GatherTiles.apply(x.features.contiguous(), table, masked_fill, border_fill)
    return Tiles([t.permute(0, 3, 1, 2) for t in parts], table, x.geometry)


def patch_tiles(x: SparseFeatures, halo: Union[int, Tuple[int, int]]) -> torch.Tensor:
    """One square (P, C, T, T) tile per visible patch (in patch order), zeros where masked or outside."""
    return gather_tiles(x, halo, max_run=1).tensors[0]
