"""CUDA-only checks (skipped without a GPU; benchmarks/gpu.sh runs them on a lent machine).

On the CPU the spconv backend computes through our gather tables (its CPU kernels race); on CUDA
it runs spconv's own kernels, which only these tests exercise.
"""
import copy

import pytest
import torch

import spark_sparse as ss
from tests.equivalence import build_model, check_masked_zero, rel_max, rel_norm, run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _case(arch, batch, size, ratio, seed=0):
    model = build_model(arch).cuda()
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g).cuda()
    visible = ss.random_visible(batch, size // 32, ratio, generator=g, device="cuda")
    out_grads = [torch.randn(o.shape, generator=torch.Generator().manual_seed(seed)).cuda()
                 for o in ss.MaskedDenseEncoder(copy.deepcopy(model))(images, visible)]
    return model, images, visible, out_grads


@pytest.mark.parametrize("backend", ["spconv", "torch", "auto"])
@pytest.mark.parametrize("train", [True, False])
def test_cuda_fp64_exact(backend, train):
    if backend == "spconv":
        pytest.importorskip("spconv")
    model, images, visible, out_grads = _case("resnet18", 2, 128, 0.6)
    model = model.double().train(train)
    out_grads = [g.double() for g in out_grads]
    ref = run(ss.MaskedDenseEncoder(copy.deepcopy(model)), images.double(), visible, out_grads)
    sp = run(ss.sparsify(copy.deepcopy(model), backend=backend), images.double(), visible, out_grads)
    for s, r in zip(sp.outputs, ref.outputs):
        assert rel_max(s, r) < 1e-8
    for n in ref.grads:
        assert rel_max(sp.grads[n], ref.grads[n]) < 1e-8, n


@pytest.mark.parametrize("backend", ["spconv", "torch"])
def test_cuda_fp32(backend):
    if backend == "spconv":
        pytest.importorskip("spconv")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, images, visible, out_grads = _case("resnet50", 4, 224, 0.6)
    ref = run(ss.MaskedDenseEncoder(copy.deepcopy(model)), images, visible, out_grads)
    sp = run(ss.sparsify(copy.deepcopy(model), backend=backend), images, visible, out_grads)
    check_masked_zero(sp.outputs, visible)
    for s, r in zip(sp.outputs, ref.outputs):
        assert rel_max(s, r) < 1e-4
    assert rel_norm(sp.grads_flat(), ref.grads_flat()) < 5e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["spconv", "auto"])
def test_cuda_autocast(dtype, backend):
    if backend == "spconv":
        pytest.importorskip("spconv")
    model, images, visible, out_grads = _case("resnet18", 4, 224, 0.6)
    ref = run(ss.MaskedDenseEncoder(copy.deepcopy(model)), images, visible, out_grads)
    enc = ss.sparsify(copy.deepcopy(model), backend=backend)
    with torch.autocast("cuda", dtype=dtype):
        sp = run(enc, images, visible, out_grads)
    for s, r in zip(sp.outputs, ref.outputs):
        assert torch.isfinite(s).all()
        assert rel_norm(s, r) < 5e-2
    assert rel_norm(sp.grads_flat(), ref.grads_flat()) < 1e-1
