"""Each spconv 2.3.8 pitfall: first shown on raw spconv (so we know the guard is needed), then our
guarded ``spconv`` backend shown correct on the same case.
"""
import pytest
import torch

spconv = pytest.importorskip("spconv.pytorch")
from spconv.pytorch import ops  # noqa: E402
from spconv.pytorch.core import ConvAlgo  # noqa: E402

import spark_sparse as ss  # noqa: E402
from spark_sparse.spec import ConvSpec  # noqa: E402
from spark_sparse.backends.rulebook import table_conv  # noqa: E402
from spark_sparse.backends.spconv_backend import (  # noqa: E402
    _SpconvNativeConv, build_rulebook, native_kernels_usable, spconv_conv, spconv_indices)
from spark_sparse.features import SparseFeatures  # noqa: E402
from spark_sparse.geometry import Geometry  # noqa: E402
from spark_sparse.layers.conv import SparseConv2d  # noqa: E402
from spark_sparse.routing import unsupported  # noqa: E402

CPU = torch.device("cpu")


def geometry(batch=2, grid=(4, 5), ratio=0.5, seed=0):
    return Geometry(ss.random_visible(batch, grid, ratio, generator=torch.Generator().manual_seed(seed)))


def spec(k, s=1, cin=8, cout=16, groups=1):
    return ConvSpec(cin, cout, (k, k), (s, s), (k // 2, k // 2), (1, 1), groups)


def subm_pairs(indices, shape, k=3):
    return ops.get_indice_pairs(indices, 2, list(shape), ConvAlgo.Native, [k, k], [1, 1], [k // 2] * 2, [1, 1],
                                [0, 0], subm=True)


def test_indices_must_be_int32_row_major():
    level = geometry().level(8)
    column_major = level.coords.to(torch.int32).t().contiguous().t()
    assert not column_major.is_contiguous()
    shape = (level.height, level.width)
    _, good_pairs, good_counts = subm_pairs(level.coords.to(torch.int32).contiguous(), shape)
    _, bad_pairs, bad_counts = subm_pairs(column_major, shape)
    assert not (torch.equal(good_pairs, bad_pairs) and torch.equal(good_counts, bad_counts)), \
        "pitfall gone upstream? column-major indices gave the right pairs"
    guarded = spconv_indices(column_major)
    assert guarded.dtype == torch.int32 and guarded.is_contiguous() and torch.equal(guarded, level.coords.int())


@pytest.mark.parametrize("k,s,in_stride", [(3, 1, 4), (7, 1, 8), (3, 2, 4), (7, 2, 1), (3, 2, 16)])
def test_rulebook_pairs_equal_our_tables(k, s, in_stride):
    """spconv's pairs, restricted to our sites, are exactly our neighbour tables."""
    geo = geometry(batch=3, grid=(3, 4), ratio=0.6, seed=k + s)
    sp = spec(k, s)
    table = geo.conv_table(in_stride, sp.kernel, sp.stride, sp.padding, sp.dilation)
    converted = build_rulebook(geo, in_stride, sp).to_table(sp.kernel)
    assert torch.equal(converted.gather, table.gather)
    assert torch.equal(converted.scatter, table.scatter)


def test_strided_conv_extra_sites_are_dropped():
    geo = geometry(batch=1, grid=(4, 4), ratio=0.75, seed=3)
    src = geo.level(4)
    out_inds, _, _ = ops.get_indice_pairs(spconv_indices(src.coords), 1, [src.height, src.width], ConvAlgo.Native,
                                          [3, 3], [2, 2], [1, 1], [1, 1], [0, 0], subm=False)
    assert out_inds.shape[0] > geo.level(8).num_sites, "raw spconv makes sites around visible patches"
    rb = build_rulebook(geo, 4, spec(3, 2))
    assert rb.num_out == geo.level(8).num_sites
    assert int(rb.pairs[1].max()) < rb.num_out


def test_cpu_scatter_races_but_backend_does_not(monkeypatch):
    """spconv's CPU scatter-add races across OpenMP threads: wrong sums with > 1 thread, but not in every
    run, so no test can demand the race. What is checked is the guard: on the CPU, with 2 threads, our
    backend never calls that kernel, and its result is the gather tables' to fp32 rounding."""
    geo = geometry(batch=2, grid=(2, 2), ratio=0.0)
    level = geo.level(1)  # 2 × 64 × 64 sites: enough work for both OpenMP threads
    x = torch.randn(level.num_sites, 32, generator=torch.Generator().manual_seed(0))
    w = torch.randn(32, 32, 3, 3, generator=torch.Generator().manual_seed(1))
    sp = spec(3, cin=32, cout=32)
    expected = table_conv(x, w, geo.conv_table(1, (3, 3), (1, 1), (1, 1), (1, 1)))
    torch.set_num_threads(2)

    def racy(*args, **kwargs):
        raise AssertionError("spconv's CPU indice_conv (racy with > 1 thread) was called")

    monkeypatch.setattr(ops, "indice_conv", racy)
    filters = w.permute(0, 2, 3, 1).contiguous()
    with pytest.raises(AssertionError, match="indice_conv"):  # the trap is on the native path
        _SpconvNativeConv.apply(x, filters, build_rulebook(geo, 1, sp))
    for _ in range(3):
        torch.testing.assert_close(spconv_conv(SparseFeatures(x, geo, 1), w, sp), expected, rtol=1e-5, atol=1e-4)


def test_cpu_backward_needs_a_gpu_in_raw_spconv():
    geo = geometry()
    sp = spec(3)
    rb = build_rulebook(geo, 8, sp)
    x = torch.randn(geo.level(8).num_sites, 8, requires_grad=True)
    filters = torch.randn(16, 3, 3, 8, requires_grad=True)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="NVIDIA driver"):  # torch.cuda.current_stream() without a GPU
            _SpconvNativeConv.apply(x, filters, rb).sum().backward()
    w = torch.randn(16, 8, 3, 3, requires_grad=True)
    spconv_conv(SparseFeatures(x, geo, 8), w, sp).square().sum().backward()  # our CPU path
    assert x.grad is not None and w.grad is not None


def test_native_kernels_only_where_safe():
    assert not native_kernels_usable(torch.device("cpu"), torch.float32)  # races, no backward
    assert not native_kernels_usable(torch.device("cuda"), torch.bfloat16)  # no bf16 kernels
    assert native_kernels_usable(torch.device("cuda"), torch.float16)
    assert native_kernels_usable(torch.device("cuda"), torch.float32)


def _masked_dense_vs_sparse(conv, backend, eval_mode=True, batch=2, grid=(3, 4)):
    """One layer: SparseConv2d on the active sites vs the dense conv on the masked input."""
    conv = conv.train(not eval_mode)
    visible = ss.random_visible(batch, grid, 0.5, generator=torch.Generator().manual_seed(2))
    geo = Geometry(visible)
    stride_in = 8
    x = torch.randn(batch, conv.in_channels, grid[0] * 4, grid[1] * 4) * ss.masks.dense_mask(visible, stride_in, 32)
    dense = conv(x)
    dense = dense * ss.masks.dense_mask(visible, stride_in * conv.stride[0], 32)
    sparse = SparseConv2d.from_dense(conv, "conv", backend)(SparseFeatures.from_dense(x, geo, stride_in))
    return sparse.dense(), dense


def test_one_by_one_conv_is_wrong_in_raw_spconv_and_a_matmul_here():
    torch.manual_seed(0)
    geo = geometry()
    level = geo.level(8)
    x = torch.randn(level.num_sites, 8)
    raw = spconv.SubMConv2d(8, 16, 1, bias=False, indice_key="k")
    out = raw(spconv.SparseConvTensor(x, spconv_indices(level.coords), [level.height, level.width], 2)).features
    assert not torch.allclose(out, x @ raw.weight.view(16, 8).t(), atol=1e-3), "pitfall gone upstream?"
    assert unsupported("spconv", spec(1), 4, CPU, x.dtype) is not None  # and 1×1 convs never route there
    conv = torch.nn.Conv2d(8, 16, 1, bias=True)
    sparse, dense = _masked_dense_vs_sparse(conv, "spconv")
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)


def test_bias_in_eval_mode_on_cpu():
    geo = geometry()
    level = geo.level(8)
    raw = spconv.SubMConv2d(8, 16, 3, bias=True, indice_key="b").eval()
    with pytest.raises(AssertionError):
        raw(spconv.SparseConvTensor(torch.randn(level.num_sites, 8), spconv_indices(level.coords),
                                    [level.height, level.width], 2))
    torch.manual_seed(0)
    sparse, dense = _masked_dense_vs_sparse(torch.nn.Conv2d(8, 16, 3, padding=1, bias=True), "spconv")
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)


def test_depthwise_falls_back_from_spconv():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 7, padding=3, groups=8, bias=True)
    assert unsupported("spconv", spec(7, cin=8, cout=8, groups=8), 4, CPU, torch.float32) is not None
    sparse, dense = _masked_dense_vs_sparse(conv, "spconv")
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_runs_on_cpu():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3, padding=1, bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sparse, dense = _masked_dense_vs_sparse(conv, "spconv")
    assert sparse.dtype == torch.bfloat16
    torch.testing.assert_close(sparse.float(), dense.float(), rtol=3e-2, atol=3e-2)
