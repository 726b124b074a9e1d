"""The ``tiles`` backend (kernels/tile_conv.py) against the ``torch`` backend's gather tables."""
import pytest
import torch

import spark_sparse as ss
from spark_sparse.spec import ConvSpec
from spark_sparse.features import SparseFeatures
from spark_sparse.geometry import Geometry
from spark_sparse.kernels.tile_conv import tile_max_pool, tiles_unsupported
from spark_sparse.kernels.tiles import window_halo
from spark_sparse.kernels.max_pool import PoolSpec
from spark_sparse.routing import compute


def features(stride, channels, batch=3, grid=(3, 4), ratio=0.5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    visible = ss.random_visible(batch, grid, ratio, generator=g)
    visible[0] = False  # an image with no visible patch
    visible[1, 0, 0] = visible[1, -1, -1] = True  # patches on the image's corners
    geo = Geometry(visible)
    n = geo.level(stride).num_sites
    return SparseFeatures(torch.randn(n, channels, generator=g, dtype=dtype).requires_grad_(), geo, stride)


CASES = [  # (kernel, stride, padding, dilation, in_stride)
    (3, 1, 1, 1, 4), (3, 1, 1, 1, 8), (3, 1, 1, 1, 16), (3, 1, 1, 1, 32), (5, 1, 2, 1, 8), (3, 1, 2, 2, 4),
    (3, 2, 1, 1, 4), (3, 2, 1, 1, 16), (7, 2, 3, 1, 1), (4, 4, 0, 1, 1), (2, 2, 0, 1, 8),
]


@pytest.mark.parametrize("k,s,p,d,in_stride", CASES)
def test_tiles_equal_gather_tables(k, s, p, d, in_stride):
    x = features(in_stride, 5)
    spec = ConvSpec(5, 6, (k, k), (s, s), (p, p), (d, d))
    w = torch.randn(6, 5, k, k, dtype=torch.float64, requires_grad=True)
    outs, grads = [], []
    for name in ("tiles", "torch"):
        out = compute(name, x, w, None, spec)
        g = torch.autograd.grad(out, (x.features, w), torch.ones_like(out).cumsum(0))
        outs.append(out)
        grads.append(g)
    assert outs[0].shape == (x.geometry.level(in_stride * s).num_sites, 6)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_window_halo():
    assert window_halo(3, 1, 1) == (1, 1)
    assert window_halo(3, 2, 1) == (1, 0)  # a 3×3/2 window reads one site before the block, none after
    assert window_halo(7, 2, 3) == (3, 2)  # ResNet stem
    assert window_halo(4, 4, 0) == (0, 0)
    assert tiles_unsupported(ConvSpec(4, 4, (1, 1), (2, 2), (0, 0), (1, 1))) is not None  # reads no border


@pytest.mark.parametrize("in_stride", [2, 4])
def test_tile_max_pool_equals_table_max_pool(in_stride):
    x = features(in_stride, 4)
    relu = x.replace(x.features.relu())  # as in ResNet: max-pool after a ReLU (many exact-zero ties)
    table = compute("maxpool-table", relu, PoolSpec(4, (3, 3), (2, 2), (1, 1)))
    tiles = tile_max_pool(relu, 3, 2, 1)
    torch.testing.assert_close(tiles, table, rtol=0, atol=0)
    g = torch.randn(tiles.shape, dtype=tiles.dtype)
    (a,) = torch.autograd.grad(tiles, x.features, g, retain_graph=True)
    (b,) = torch.autograd.grad(table, x.features, g)
    torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)  # summation order of the max-pool backward


def test_tiles_under_bf16_autocast():
    x = features(4, 8, dtype=torch.float32)
    spec = ConvSpec(8, 8, (3, 3), (1, 1), (1, 1), (1, 1))
    w = torch.randn(8, 8, 3, 3, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compute("tiles", x, w, None, spec)
    ref = compute("torch", x, w, None, spec)
    assert out.dtype == torch.bfloat16
    assert float((out.detach().float() - ref.detach()).norm() / ref.detach().norm()) < 1e-2
