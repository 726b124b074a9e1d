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

# cuDNN's fp64 backward sums in no fixed order: wider than the CPU's 1e-12 until a GPU run's printed
# worst error supports less
CUDA_FP64_TOL = 1e-10


def _case(arch, batch, size, ratio, seed=0):
    model = build_model(arch).cuda()
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g).cuda()
    visible = ss.random_visible(batch, size // 32, ratio, generator=g, device="cuda")
    out_grads = [torch.randn(o.shape, generator=torch.Generator().manual_seed(seed)).cuda()
                 for o in ss.MaskedDenseEncoder(copy.deepcopy(model))(images, visible)]
    return model, images, visible, out_grads


@pytest.mark.parametrize("backend", ["spconv", "torch", "gather-conv", "auto"])
@pytest.mark.parametrize("train", [True, False])
def test_cuda_fp64_exact(backend, train):
    if backend == "spconv":
        pytest.importorskip("spconv")
    model, images, visible, out_grads = _case("resnet18", 2, 128, 0.6)
    model = model.double().train(train)
    out_grads = [g.double() for g in out_grads]
    ref = run(ss.MaskedDenseEncoder(copy.deepcopy(model)), images.double(), visible, out_grads)
    sp = run(ss.sparsify(copy.deepcopy(model), backend=backend), images.double(), visible, out_grads)
    worst = max([rel_max(s, r) for s, r in zip(sp.outputs, ref.outputs)]
                + [rel_max(sp.grads[n], ref.grads[n]) for n in ref.grads])
    print(f"cuda fp64 ({backend}, {'train' if train else 'eval'}): worst max-relative error {worst:.1e}")
    for s, r in zip(sp.outputs, ref.outputs):
        assert rel_max(s, r) <= CUDA_FP64_TOL
    for n in ref.grads:
        assert rel_max(sp.grads[n], ref.grads[n]) <= CUDA_FP64_TOL, n


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


GPU_CANDIDATES = [("resnet18", "torch"), ("resnet18", "gather-conv"), ("resnet18", "tiles"), ("resnet18", "spconv"),
                  ("convnext_atto", "depthwise-table"), ("convnext_atto", "depthwise-tiles"),
                  ("convnext_atto", "depthwise-dense"), ("convnext_atto", "depthwise-triton")]


@pytest.mark.parametrize("arch,implementation", GPU_CANDIDATES)
def test_cuda_every_candidate_fp32(arch, implementation):
    """Each GPU candidate of measured routing (tiles on cuDNN, spconv's kernels, Triton, the
    gather-GEMM on cuBLAS and on cuDNN) runs every layer of its kind and computes the reference's numbers."""
    from spark_sparse.layers.conv import SparseConv2d
    if implementation == "spconv":
        pytest.importorskip("spconv")
    if implementation == "depthwise-triton":
        pytest.importorskip("triton")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    model, images, visible, out_grads = _case(arch, 4, 128, 0.6)
    ref = run(ss.MaskedDenseEncoder(copy.deepcopy(model)), images, visible, out_grads)
    enc = ss.sparsify(copy.deepcopy(model))
    if implementation.startswith("depthwise-"):
        enc.set_depthwise(implementation)
    else:
        enc.set_backend(implementation)
    used = []
    hooks = [m.register_forward_pre_hook(lambda m, a: used.append(m.route_for(a[0]).implementation))
             for m in enc.modules() if isinstance(m, SparseConv2d)]
    sp = run(enc, images, visible, out_grads)
    for h in hooks:
        h.remove()
    assert implementation in used and set(used) <= {implementation, "matmul", "patchify"}
    for s, r in zip(sp.outputs, ref.outputs):
        assert rel_max(s, r) < 1e-4
    assert rel_norm(sp.grads_flat(), ref.grads_flat()) < 5e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_measured_routing(dtype, tmp_path, monkeypatch):
    """Measured routing on the GPU: it tunes, every route can run its layer in this dtype (bf16:
    never spconv), a second encoder reads the decisions, and the numbers stay the reference's."""
    from spark_sparse import routing
    from spark_sparse.layers.conv import SparseConv2d
    monkeypatch.setenv("SPARK_SPARSE_CACHE_DIR", str(tmp_path))
    routing.forget_measurements()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    half = dtype != torch.float32
    for arch in ("resnet18", "convnext_atto"):
        model, images, visible, out_grads = _case(arch, 4, 128, 0.6)
        ref = run(ss.MaskedDenseEncoder(copy.deepcopy(model)), images, visible, out_grads)
        enc = ss.sparsify(copy.deepcopy(model)).set_routing("measured")
        with torch.autocast("cuda", dtype=dtype, enabled=half):
            sp = run(enc, images, visible, out_grads)
        chosen = []
        hooks = [m.register_forward_pre_hook(
            lambda m, a: chosen.append((m.spec, a[0].level.r, m.route_for(a[0]).implementation)))
            for m in enc.modules() if isinstance(m, SparseConv2d)]
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=half):
            enc(images, visible)
        for h in hooks:
            h.remove()
        for spec, r, impl in chosen:
            assert routing.unsupported(impl, spec, r, images.device, dtype) is None, (spec, r, impl)
            assert not (dtype == torch.bfloat16 and impl == "spconv")
        for s, r in zip(sp.outputs, ref.outputs):
            assert torch.isfinite(s).all()
            assert (rel_norm(s, r) < 5e-2) if half else (rel_max(s, r) < 1e-4)
    tuned = routing.tuning_stats()["tuned"]
    assert tuned > 0
    routing.forget_measurements()
    enc = ss.sparsify(copy.deepcopy(model)).set_routing("measured")
    with torch.autocast("cuda", dtype=dtype, enabled=half):
        run(enc, images, visible, out_grads)
    assert routing.tuning_stats()["tuned"] == 0
    routing.forget_measurements()
