"""Sparse depthwise kernels (kernels/depthwise.py) against their plain-PyTorch twin, and the twin
against an independent dense computation; the halo-tile gather (kernels/tiles.py) on its own.

Masks include an image with no visible patch (between two others, so row offsets are exercised)
and patches in image corners (every halo reaches outside the image). Strides 4 to 32 cover halos
narrower and wider than a patch block (r = 8 … 1 for a 7×7 kernel's halo of 3). The Triton kernels
run in Triton's interpreter on CPU tensors, on small inputs.
"""
import pytest
import torch
import torch.nn.functional as F

from spark_sparse.spec import ConvSpec
from spark_sparse.features import SparseFeatures
from spark_sparse.geometry import Geometry
from spark_sparse.kernels.tiles import patch_tiles, tile_table
from spark_sparse.routing import compute, route, unsupported

from tests.equivalence import rel_max, rel_norm

C = 6


def make_mask(batch: int) -> torch.Tensor:
    """(batch, 2, 3): corners only, then (batch 3) an empty image, then a half-visible one."""
    visible = torch.zeros(batch, 2, 3, dtype=torch.bool)
    visible[0, 0, 0] = visible[0, 1, 2] = True
    visible[-1, 0, 1] = visible[-1, 1, 0] = visible[-1, 1, 1] = True
    if batch == 3:
        assert not visible[1].any()
    return visible


def spec_for(kernel=7, dilation=1, stride=1):
    pad = dilation * (kernel - 1) // 2
    return ConvSpec(C, C, (kernel, kernel), (stride, stride), (pad, pad), (dilation, dilation), C)


def run_impl(impl, x: SparseFeatures, weight, spec, dtype=None):
    """Forward and backward of ``sum(out * g)``: (out, grad_features, grad_weight) in fp64."""
    dtype = dtype or x.features.dtype
    feats = x.features.detach().to(dtype).requires_grad_()
    w = weight.detach().to(dtype).requires_grad_()
    out = compute(f"depthwise-{impl}", x.replace(feats), w, None, spec)
    g = torch.Generator().manual_seed(7)
    out_grad = torch.randn(out.shape, generator=g).to(dtype)
    (out * out_grad).sum().backward()
    return out.detach().double(), feats.grad.double(), w.grad.double()


def inputs(batch, stride, spec, seed=0):
    geometry = Geometry(make_mask(batch))
    g = torch.Generator().manual_seed(seed)
    n = geometry.level(stride).num_sites
    feats = torch.randn(n, C, generator=g)
    weight = torch.randn(C, 1, *spec.kernel, generator=g)
    return SparseFeatures(feats, geometry, stride), weight


def dense_reference(x: SparseFeatures, weight, spec):
    """Independent of the kernels and of the core's scatter (which the 'dense' implementation uses):
    each site written to and read from its (b, y, x) coordinates, torch's conv in between."""
    level, out = x.level, x.geometry.level(x.stride * spec.stride[0])
    c = level.coords
    dense = x.features.new_zeros(x.geometry.batch, level.height, level.width, x.channels)
    dense[c[:, 0], c[:, 1], c[:, 2]] = x.features
    y = F.conv2d(dense.permute(0, 3, 1, 2), weight, None, spec.stride, spec.padding, spec.dilation, spec.groups)
    o = out.coords
    return y.permute(0, 2, 3, 1)[o[:, 0], o[:, 1], o[:, 2]]


@pytest.mark.parametrize("stride", [4, 8, 16, 32])
@pytest.mark.parametrize("batch", [2, 3])
def test_twin_equals_dense_conv(batch, stride):
    spec = spec_for()
    x, weight = inputs(batch, stride, spec)
    x64 = x.replace(x.features.double().requires_grad_())
    w64 = weight.double().requires_grad_()
    out, gx, gw = run_impl("table", x64, w64, spec)
    feats = x64.features.detach().requires_grad_()
    w = w64.detach().requires_grad_()
    ref = dense_reference(x64.replace(feats), w, spec)
    g = torch.Generator().manual_seed(7)
    (ref * torch.randn(ref.shape, generator=g).double()).sum().backward()
    assert rel_max(out, ref.detach()) < 1e-12
    assert rel_max(gx, feats.grad) < 1e-12 and rel_max(gw, w.grad) < 1e-12


def test_twin_strided_and_dilated_equal_dense_conv():
    for spec, stride in ((spec_for(3, stride=2), 4), (spec_for(3, dilation=2), 8)):
        x, weight = inputs(3, stride, spec)
        x = x.replace(x.features.double())
        out = compute("depthwise-table", x, weight.double(), None, spec)
        assert rel_max(out, dense_reference(x, weight.double(), spec)) < 1e-12


# The Triton kernels do not depend on the stride (they read the neighbour table); the interpreter
# is slow, so they get fewer cases: stride 8 still spans several row blocks, stride 32 wide halos.
FP32_CASES = [(impl, batch, stride) for impl in ("tiles", "dense", "triton") for batch in (2, 3)
              for stride in ((4, 8, 16, 32) if impl != "triton" else (8, 32))]


@pytest.mark.parametrize("impl,batch,stride", FP32_CASES)
def test_fp32_equals_twin(impl, batch, stride):
    if impl == "triton":
        pytest.importorskip("triton")
    spec = spec_for()
    x, weight = inputs(batch, stride, spec)
    out, gx, gw = run_impl(impl, x, weight, spec)
    t_out, t_gx, t_gw = run_impl("table", x, weight, spec)
    assert rel_max(out, t_out) < 1e-5
    assert rel_max(gx, t_gx) < 1e-5
    assert rel_max(gw, t_gw) < 1e-5


@pytest.mark.parametrize("impl", ["table", "tiles", "dense", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp32_twin(impl, dtype):
    """bf16 / fp16 (loose): against the fp32 twin on the same (half-representable) inputs."""
    if impl == "triton":
        pytest.importorskip("triton")
    spec = spec_for()
    for batch, stride in ((3, 8), (2, 16))[:1 if impl == "triton" else 2]:
        x, weight = inputs(batch, stride, spec)
        x = x.replace(x.features.to(dtype).float())
        weight = weight.to(dtype).float()
        out, gx, gw = run_impl(impl, x, weight, spec, dtype=dtype)
        t_out, t_gx, t_gw = run_impl("table", x, weight, spec)
        tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
        assert rel_max(out, t_out) < tol
        assert rel_norm(gx, t_gx) < tol and rel_norm(gw, t_gw) < tol


def test_triton_strided_equals_twin():
    pytest.importorskip("triton")
    spec = spec_for(3, stride=2)
    x, weight = inputs(3, 8, spec)
    for a, b in zip(run_impl("triton", x, weight, spec), run_impl("table", x, weight, spec)):
        assert rel_max(a, b) < 1e-5


def test_fixed_routes_and_refusals():
    spec = spec_for()
    cpu = torch.device("cpu")

    def fixed(spec, r, dtype):
        return route(spec, r, cpu, dtype, routing="fixed").implementation

    assert [fixed(spec, r, torch.float32) for r in (8, 4)] == ["depthwise-tiles"] * 2
    assert [fixed(spec, r, torch.bfloat16) for r in (2, 1)] == ["depthwise-dense"] * 2
    assert fixed(spec, 8, torch.float64) == "depthwise-table"   # no fast fp64 depthwise conv on CPU
    assert fixed(spec_for(3, stride=2), 8, torch.float32) == "depthwise-table"
    for impl in ("depthwise-tiles", "depthwise-dense"):
        assert unsupported(impl, spec_for(3, stride=2), 8, cpu, torch.float32) is not None
    assert unsupported("depthwise-table", spec_for(3, stride=2), 8, cpu, torch.float32) is None
    with pytest.raises(ValueError, match="choose one of"):
        unsupported("cudnn", spec, 8, cpu, torch.float32)
    strided = spec_for(3, stride=2)
    x, weight = inputs(3, 8, strided)
    with pytest.raises(ValueError, match="depthwise-tiles cannot run this layer"):
        compute("depthwise-tiles", x, weight, None, strided)  # the public call checks, as the router does


def test_autocast_runs_in_bf16():
    spec = spec_for()
    x, weight = inputs(3, 8, spec)
    impl = route(spec, x.level.r, x.features.device, torch.bfloat16, routing="fixed").implementation
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compute(impl, x, weight, None, spec)
    assert out.dtype == torch.bfloat16
    assert rel_max(out.double(), run_impl("table", x, weight, spec)[0]) < 3e-2


# ---- the halo-tile gather -------------------------------------------------------------------

def dense_tiles(x: SparseFeatures, halo: int) -> torch.Tensor:
    """(P, C, T, T) cut from the zero-padded dense map: what the gather must return."""
    r = x.level.r
    padded = F.pad(x.dense(), (halo,) * 4)
    p = x.geometry.patches
    return torch.stack([padded[b, :, y * r:y * r + r + 2 * halo, xx * r:xx * r + r + 2 * halo]
                        for b, y, xx in p.tolist()])


@pytest.mark.parametrize("stride,halo", [(4, 3), (8, 1), (16, 3), (32, 3), (8, 0)])
def test_gather_tiles_equals_padded_dense_crops(stride, halo):
    x, _ = inputs(3, stride, spec_for())
    feats = x.features.double().requires_grad_()
    tiles = patch_tiles(x.replace(feats), halo)
    assert tiles.shape == (x.geometry.num_patches, C, x.level.r + 2 * halo, x.level.r + 2 * halo)
    assert tiles.is_contiguous(memory_format=torch.channels_last)
    ref_feats = x.features.double().requires_grad_()
    ref = dense_tiles(x.replace(ref_feats), halo)
    assert torch.equal(tiles, ref)
    g = torch.randn(tiles.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (tiles * g).sum().backward()
    (ref * g).sum().backward()
    assert rel_max(feats.grad, ref_feats.grad) < 1e-12  # backward: each site's copies summed


def test_tiles_round_trip_and_cache():
    x, _ = inputs(3, 8, spec_for())
    t = patch_tiles(x, 2)
    assert torch.equal(t[:, :, 2:-2, 2:-2].permute(0, 2, 3, 1).reshape(-1, C), x.features)
    assert tile_table(x.geometry, 8, 2) is tile_table(x.geometry, 8, 2)
    table = tile_table(x.geometry, 32, 3, max_run=1)  # r = 1: a site lies in up to 7×7 tiles
    assert table.inverse.shape[1] <= 49
    # every pixel that reads a site is listed exactly once in that site's inverse row
    flat = torch.cat([b.index.reshape(-1) for b in table.buckets])
    assert int((table.inverse < table.num_pixels).sum()) == int((flat < table.num_sites).sum())
    listed = table.inverse[table.inverse < table.num_pixels]
    assert listed.unique().numel() == listed.numel()
