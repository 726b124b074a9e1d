"""Wide halo tiles (runs of adjacent visible patches, kernels/tiles.py) and the tiled max-pool.

Every tile path is checked in fp64 against a plain twin: convs against the ``torch`` backend's
gather tables, the max-pool against SparK's masked-dense max-pool (a dense max_pool2d on the map
whose masked sites hold 0), forward and gradients.
"""
import pytest
import torch
import torch.nn.functional as F

from spark_sparse.spec import ConvSpec
from spark_sparse.features import SparseFeatures
from spark_sparse.geometry import Geometry
from spark_sparse.kernels.tiles import gather_tiles, run_pieces, tile_table, window_halo
from spark_sparse.layers.pool import SparseMaxPool2d
from spark_sparse.routing import compute

# Rows of a 3×10 patch grid, chosen so that runs of every length 1..10 occur, touching the left
# and right image borders and with masked patches above, below and beside them.
ROWS = ["1111111111", "0101101110", "1111111010"]


def visible_mask(batch: int = 3, seed: int = 0) -> torch.Tensor:
    fixed = torch.tensor([[c == "1" for c in row] for row in ROWS])
    g = torch.Generator().manual_seed(seed)
    random = torch.rand(batch - 2, *fixed.shape, generator=g) < 0.5
    empty = torch.zeros_like(fixed)  # an image with no visible patch
    return torch.cat([fixed[None], empty[None], random])


def features(stride: int, channels: int, seed: int = 0) -> SparseFeatures:
    geo = Geometry(visible_mask(seed=seed))
    n = geo.level(stride).num_sites
    g = torch.Generator().manual_seed(seed + 1)
    return SparseFeatures(torch.randn(n, channels, generator=g, dtype=torch.float64).requires_grad_(), geo, stride)


@pytest.mark.parametrize("max_run", [1, 2, 4, 8])
def test_run_pieces_cover_every_patch_once_in_power_of_two_runs(max_run):
    patches = Geometry(visible_mask()).patches
    pieces = run_pieces(patches, max_run)
    covered = []
    for run, first in pieces:
        assert run <= max_run and run & (run - 1) == 0
        for start in first.tolist():
            members = patches[start:start + run]
            assert (members[:, :2] == members[0, :2]).all()  # one image row
            assert torch.equal(members[:, 2], members[0, 2] + torch.arange(run))  # adjacent patches
            covered += range(start, start + run)
    assert sorted(covered) == list(range(patches.shape[0]))
    lengths = [run for run, _ in pieces]
    assert lengths == sorted(lengths)
    expected = {1, 2, 4, 8} & set(range(1, max_run + 1))
    assert set(lengths) == expected  # the first image's runs of 10, 3, 2, 1 … need every bucket


@pytest.mark.parametrize("max_run", [1, 2, 4, 8])
def test_wide_tiles_are_padded_dense_crops(max_run):
    x = features(8, 3)
    lo, hi = 2, 1
    tiles = gather_tiles(x, (lo, hi), max_run=max_run)
    table = tile_table(x.geometry, 8, (lo, hi), max_run)
    padded = F.pad(x.dense(), (lo, hi, lo, hi))
    r, p = x.level.r, x.geometry.patches
    for bucket, t in zip(table.buckets, tiles.tensors):
        assert t.shape[2:] == (r + lo + hi, bucket.run * r + lo + hi)
        assert t.is_contiguous(memory_format=torch.channels_last)
        for i, start in enumerate(bucket.first_patch.tolist()):
            b, y, xx = p[start].tolist()
            crop = padded[b, :, y * r:y * r + r + lo + hi, xx * r:xx * r + bucket.run * r + lo + hi]
            assert torch.equal(t[i], crop)


def test_border_and_masked_pixels_read_their_own_fill():
    x = features(16, 2)
    x = x.replace(x.features.detach().abs() + 1)  # every visible value > 0
    tiles = gather_tiles(x, 1, masked_fill=-1.0, border_fill=-2.0)
    table = tile_table(x.geometry, 16, 1)
    for bucket, t in zip(table.buckets, tiles.tensors):
        index = bucket.index.unsqueeze(1).expand_as(t)
        assert torch.equal(t < 0, index >= table.num_sites)
        assert (t[index == table.num_sites] == -1).all() and (t[index == table.num_sites + 1] == -2).all()
        assert (index == table.num_sites + 1).any()  # the grid's edge tiles do reach the border


CONVS = [  # (kernel, stride, padding, in_stride, channels)
    (3, 1, 1, 4, 5), (3, 1, 1, 8, 5), (3, 1, 1, 16, 5), (3, 2, 1, 4, 5), (3, 2, 1, 8, 5), (7, 2, 3, 1, 3),
]


@pytest.mark.parametrize("max_run", [1, 2, 4, 8])
@pytest.mark.parametrize("k,s,p,in_stride,c", CONVS)
def test_wide_tile_conv_equals_gather_tables_fp64(k, s, p, in_stride, c, max_run):
    x = features(in_stride, c)
    spec = ConvSpec(c, 4, (k, k), (s, s), (p, p), (1, 1))
    w = torch.randn(4, c, k, k, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    tiles = gather_tiles(x, window_halo(k, s, p), max_run=max_run)
    out = tiles.assemble([F.conv2d(t, w, None, s) for t in tiles.tensors], s)
    ref = compute("torch", x, w, None, spec)
    assert out.shape == ref.shape == (x.geometry.level(in_stride * s).num_sites, 4)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for a, b in zip(torch.autograd.grad(out, (x.features, w), g), torch.autograd.grad(ref, (x.features, w), g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("in_stride", [4, 8])
def test_tiles_backend_and_depthwise_tiles_fp64(in_stride):
    """The library entry points (tiles backend, depthwise 'tiles') on wide tiles against their twins."""
    x = features(in_stride, 6)
    spec = ConvSpec(6, 6, (3, 3), (2, 2), (1, 1), (1, 1))
    w = torch.randn(6, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    outs = [compute(b, x, w, None, spec) for b in ("tiles", "torch")]
    dw_spec = ConvSpec(6, 6, (7, 7), (1, 1), (3, 3), (1, 1), 6)
    dw = torch.randn(6, 1, 7, 7, dtype=torch.float64, requires_grad=True)
    dws = [compute(impl, x, dw, None, dw_spec) for impl in ("depthwise-tiles", "depthwise-table")]
    for a, b, inputs in ((*outs, (x.features, w)), (*dws, (x.features, dw))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        g = torch.randn(a.shape, dtype=torch.float64)
        for ga, gb in zip(torch.autograd.grad(a, inputs, g), torch.autograd.grad(b, inputs, g)):
            torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)


def masked_dense_max_pool(x: SparseFeatures, k: int, s: int, p: int) -> torch.Tensor:
    """SparK's reference: max_pool2d of the map whose masked sites are 0, at the output's active sites."""
    pooled = F.max_pool2d(x.dense(), k, s, p)
    return SparseFeatures.from_dense(pooled, x.geometry, x.stride * s).features


@pytest.mark.parametrize("path", ["tiles", "table"])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("in_stride", [2, 8, 16])
def test_max_pool_equals_masked_dense_reference_fp64(path, relu, in_stride):
    """Values and gradients exactly the reference's: after a ReLU (visible zeros tie with masked
    zeros: the first in window order wins, and a masked winner passes no gradient on) and without
    one (a window whose visible values are all negative returns the masked 0)."""
    x = features(in_stride, 4)
    inp = x.replace(x.features.relu() if relu else x.features)
    pool = SparseMaxPool2d(3, 2, 1)
    out = compute(f"maxpool-{path}", inp, pool.layer_spec(inp))
    ref = masked_dense_max_pool(inp, 3, 2, 1)
    assert torch.equal(out, ref)
    if not relu:
        assert (ref == 0).any()  # some window's max is a masked zero
    g = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    (a,) = torch.autograd.grad(out, x.features, g, retain_graph=True)
    (b,) = torch.autograd.grad(ref, x.features, g)
    # a tie won by the wrong input would be off by a whole gradient; 1e-14 allows only the order in
    # which a site's gradients from overlapping windows are summed
    torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_max_pool_whose_window_reads_no_border_after_uses_the_table():
    """A 1×1/2 window reads nothing after its block (window_halo's after < 0): the table path."""
    x = features(8, 3)
    assert window_halo(1, 2, 0)[1] < 0
    out = SparseMaxPool2d(1, 2, 0)(x)
    assert out.stride == 16
    torch.testing.assert_close(out.features, masked_dense_max_pool(x, 1, 2, 0), rtol=0, atol=0)


def test_residual_add_goes_in_place_only_into_a_fresh_intermediate():
    from spark_sparse.layers.containers import residual_add
    block_input = torch.randn(5, 3, requires_grad=True)
    shortcut = torch.randn(5, 3)
    main = block_input * 2  # a fresh output of the branch's last layer
    kept = block_input.detach().clone()
    out = residual_add(main, shortcut, block_input)
    assert out is main
    torch.testing.assert_close(out, kept * 2 + shortcut)
    out.sum().backward()
    torch.testing.assert_close(block_input.grad, torch.full_like(kept, 2.0))
    for main in (block_input, shortcut):  # an all-identity branch, or a tensor someone else holds
        out = residual_add(main, shortcut, block_input)
        assert out is not main
    assert torch.equal(block_input.detach(), kept)
