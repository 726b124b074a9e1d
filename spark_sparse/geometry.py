"""Where the active sites are, at every stride, and the index tables layers need.

One ``Geometry`` is built per batch from the patch mask and shared by every layer, so each index
table is built once per batch (cached by its key) however many layers use it.

Site order is *patch-major*: (visible patch in row-major (b, py, px) order, row in patch, column
in patch). At stride s every visible patch is an r×r block (r = patch_size / s), so the (N, C)
feature matrix of a level is also a (P, r, r, C) batch of tiles: convolutions whose kernel equals
their stride, 1×1 strided shortcuts and 2×2 average pools become reshapes, with no index table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Hashable, Tuple, TypeVar

import torch

from .plan import PATCH_SIZE

T = TypeVar("T")
Pair = Tuple[int, int]


@dataclass(frozen=True)
class ConvTable:
    """Neighbour tables of one convolution geometry (kernel, stride, padding, dilation).

    ``gather[o, k]`` is the input row read by output row ``o`` at kernel offset ``k`` (row-major
    over the kernel window), or ``n_in`` where that input is masked or outside the image.
    ``scatter[i, k]`` is the inverse: the output row that reads input row ``i`` at offset ``k``,
    or ``n_out``. The inverse turns the input gradient into another gather (no atomics, the same
    result for any thread count).
    """
    gather: torch.Tensor
    scatter: torch.Tensor
    n_in: int
    n_out: int
    kernel: Pair

    @classmethod
    def from_gather(cls, gather: torch.Tensor, n_in: int, n_out: int, kernel: Pair) -> "ConvTable":
        """Complete a gather table with its inverse."""
        k = gather.shape[1]
        scatter = torch.full((n_in + 1, k), n_out, dtype=torch.long, device=gather.device)
        out_rows = torch.arange(n_out, device=gather.device).view(-1, 1).expand_as(gather)
        offsets = torch.arange(k, device=gather.device).view(1, -1).expand_as(gather)
        scatter[gather, offsets] = out_rows  # misses all land on the dropped sentinel row n_in
        return cls(gather.contiguous(), scatter[:-1].contiguous(), n_in, n_out, tuple(kernel))


class Level:
    """The active sites at one stride: counts, coordinates and a dense lookup grid (built lazily)."""

    def __init__(self, geometry: "Geometry", stride: int):
        if geometry.patch_size % stride:
            raise ValueError(f"stride {stride} does not divide the patch size {geometry.patch_size}")
        self.geometry = geometry
        self.stride = stride
        self.r = geometry.patch_size // stride
        self.num_sites = geometry.num_patches * self.r * self.r
        self.height = geometry.grid_hw[0] * self.r
        self.width = geometry.grid_hw[1] * self.r
        self._coords = None
        self._grid = None

    @property
    def coords(self) -> torch.Tensor:
        """(N, 3) int64 rows (b, y, x) in patch-major order."""
        if self._coords is None:
            p = self.geometry.patches
            r = self.r
            offs = torch.arange(r, device=p.device)
            b = p[:, 0].view(-1, 1, 1).expand(-1, r, r)
            y = (p[:, 1].view(-1, 1, 1) * r + offs.view(1, r, 1)).expand(-1, r, r)
            x = (p[:, 2].view(-1, 1, 1) * r + offs.view(1, 1, r)).expand(-1, r, r)
            self._coords = torch.stack([b, y, x], dim=-1).reshape(-1, 3).contiguous()
        return self._coords

    @property
    def batch_index(self) -> torch.Tensor:
        """(N,) image index of every site."""
        return self.coords[:, 0]

    @property
    def grid(self) -> torch.Tensor:
        """(B, H/s, W/s) int64: the row of each active site, ``num_sites`` at masked sites."""
        if self._grid is None:
            g = self.geometry
            grid = torch.full((g.batch, self.height, self.width), self.num_sites, dtype=torch.long,
                              device=g.device)
            c = self.coords
            grid[c[:, 0], c[:, 1], c[:, 2]] = torch.arange(self.num_sites, device=g.device)
            self._grid = grid
        return self._grid


class Geometry:
    """Active sites of one batch at every stride, from its patch mask ``visible`` (B, h, w)."""

    def __init__(self, visible: torch.Tensor, patch_size: int = PATCH_SIZE):
        if visible.dim() != 3 or visible.dtype != torch.bool:
            raise ValueError(f"visible must be a (B, h, w) bool tensor, got {tuple(visible.shape)} {visible.dtype}")
        self.visible = visible
        self.patch_size = patch_size
        self.batch = visible.shape[0]
        self.grid_hw = (visible.shape[1], visible.shape[2])
        self.device = visible.device
        # nonzero() returns a column-major view; keep a contiguous copy (spconv reads raw pointers).
        self.patches = visible.nonzero().contiguous()
        self.num_patches = self.patches.shape[0]
        self._levels: Dict[int, Level] = {}
        self._cache: Dict[Hashable, object] = {}

    def level(self, stride: int) -> Level:
        if stride not in self._levels:
            self._levels[stride] = Level(self, stride)
        return self._levels[stride]

    def cached(self, key: Hashable, build: Callable[[], T]) -> T:
        """Build a per-batch object once (index tables, backend rulebooks) and reuse it."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]  # type: ignore[return-value]

    def conv_table(self, in_stride: int, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair) -> ConvTable:
        key = ("conv", in_stride, tuple(kernel), tuple(stride), tuple(padding), tuple(dilation))

        def build():
            rows = self.window_rows(in_stride, kernel, stride, padding, dilation)
            n_in = self.level(in_stride).num_sites
            return ConvTable.from_gather(rows.clamp(max=n_in), n_in, rows.shape[0], tuple(kernel))
        return self.cached(key, build)

    def window_rows(self, in_stride: int, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair) -> torch.Tensor:
        """(N_out, kh·kw): the input row each output's window reads at each offset (row-major), or
        ``n_in`` where that input is masked and ``n_in + 1`` where it lies outside the image (a
        max-pool reads 0 at the one, −inf at the other, as the masked-dense reference does). Cached."""
        key = ("window", in_stride, tuple(kernel), tuple(stride), tuple(padding), tuple(dilation))
        return self.cached(key, lambda: self._build_window_rows(in_stride, kernel, stride, padding, dilation))

    def _build_window_rows(self, in_stride, kernel, stride, padding, dilation) -> torch.Tensor:
        if stride[0] != stride[1]:
            raise ValueError(f"only square strides are supported, got {tuple(stride)}")
        src = self.level(in_stride)
        dst = self.level(in_stride * stride[0])
        kh, kw = kernel
        dev = self.device
        c = dst.coords
        ky = torch.arange(kh, device=dev) * dilation[0]
        kx = torch.arange(kw, device=dev) * dilation[1]
        iy = (c[:, 1] * stride[0] - padding[0]).view(-1, 1, 1) + ky.view(1, kh, 1)
        ix = (c[:, 2] * stride[1] - padding[1]).view(-1, 1, 1) + kx.view(1, 1, kw)
        inside = (iy >= 0) & (iy < src.height) & (ix >= 0) & (ix < src.width)
        rows = src.grid[c[:, 0].view(-1, 1, 1), iy.clamp(0, src.height - 1), ix.clamp(0, src.width - 1)]
        return torch.where(inside, rows, src.num_sites + 1).reshape(dst.num_sites, kh * kw).contiguous()


def maps_to_next_level(kernel: int, stride: int, padding: int, dilation: int = 1) -> bool:
    """True when a dense conv/pool turns any size H (a multiple of ``stride``) into exactly H/stride.

    Only then are its outputs the active sites of the next stride: out = floor((H + a)/s) + 1 with
    a = 2p - d(k-1) - 1, which is H/s exactly when floor(a/s) = -1.
    """
    a = 2 * padding - dilation * (kernel - 1) - 1
    return a // stride == -1
