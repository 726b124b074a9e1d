"""Pooling on active sites: outputs exactly at the next stride's active sites."""
from __future__ import annotations

from typing import Optional

from torch import nn

from ..errors import UnsupportedLayerError
from ..features import SparseFeatures
from ..geometry import maps_to_next_level
from ..kernels.max_pool import PoolSpec
from .base import RoutedModule, SparseModule


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class SparseMaxPool2d(RoutedModule):
    """SparK's masked-dense max-pool at the active output sites: a masked neighbour reads 0 and a
    pixel outside the image −inf, as in the reference (kernels/max_pool.py). Runs on halo tiles
    (``maxpool-tiles``) or on the window table (``maxpool-table``), as the router decides."""

    def __init__(self, kernel_size, stride, padding):
        super().__init__()
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), _pair(padding)

    def layer_spec(self, x: SparseFeatures) -> PoolSpec:
        return PoolSpec(x.channels, self.kernel_size, self.stride, self.padding)

    def operands(self, x: SparseFeatures, trial_grad: Optional[bool] = None) -> tuple:
        return (self.layer_spec(x),)

    def forward(self, x: SparseFeatures) -> SparseFeatures:
        return self.run_routed(x)

    @classmethod
    def from_dense(cls, pool: nn.MaxPool2d, path: str) -> "SparseMaxPool2d":
        if pool.ceil_mode or _pair(pool.dilation) != (1, 1) or pool.return_indices:
            raise UnsupportedLayerError(path, pool, "only ceil_mode=False, dilation=1 max-pools")
        k, st, p = _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding)
        if st[0] != st[1] or not all(maps_to_next_level(*v) for v in zip(k, st, p)):
            raise UnsupportedLayerError(path, pool, "the pooled size must be exactly input/stride "
                                                    "(e.g. kernel 3, stride 2, padding 1)")
        return cls(pool.kernel_size, pool.stride, pool.padding)


class SparseAvgPool2d(SparseModule):
    """Average pool whose window equals its stride (ResNet-D shortcut): a mean within each patch tile.

    Such a window never crosses a patch, so it never sees a masked site: dividing by the full
    window is exactly what the masked-dense reference does.
    """

    def __init__(self, kernel: int):
        super().__init__()
        self.kernel = kernel

    def forward(self, x: SparseFeatures) -> SparseFeatures:
        k = self.kernel
        r = x.level.r
        t = x.tiles().view(-1, r // k, k, r // k, k, x.channels)
        return x.replace(t.mean(dim=(2, 4)).reshape(-1, x.channels), stride=x.stride * k)

    @classmethod
    def from_dense(cls, pool: nn.AvgPool2d, path: str) -> "SparseAvgPool2d":
        k, s, p = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding)
        if k != s or k[0] != k[1] or p != (0, 0) or pool.divisor_override:
            raise UnsupportedLayerError(
                path, pool, "only square average pools with kernel == stride and no padding: other windows "
                            "cross masked patches, where SparK's reference divides by the full window")
        return cls(k[0])
