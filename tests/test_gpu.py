"""CUDA checks, skipped without a GPU; benchmarks/gpu.sh runs them (`python -m pytest -m gpu`).

The sparse encoder on CUDA against the masked-dense reference on CUDA (every backend, forward and
every gradient, fp32 with TF32 off), mixed precision, and the benchmark's CUDA paths (timing with
synchronisation, max_memory_allocated).
"""
import copy
import json

import pytest
import torch

import spark_sparse as ss
from equivalence import FWD_TOL, GRAD_TOL, build_model, rel_max, rel_norm, run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _backends():
    from spark_sparse.backends import spconv_available
    return ["torch", "auto"] + (["spconv"] if spconv_available() else [])


def _inputs(batch, size, ratio, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    visible = ss.random_visible(batch, (size // 32, size // 32), ratio, generator=g)
    return images.cuda(), visible.cuda()


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("arch,train", [("resnet18", True), ("resnet50", False)])
def test_cuda_sparse_matches_cuda_reference(arch, train, backend):
    model = build_model(arch).cuda().train(train)
    images, visible = _inputs(4, 224, 0.6)
    ref = ss.MaskedDenseEncoder(copy.deepcopy(model))
    out_grads = [torch.randn_like(o) for o in ref(images, visible)]
    ref = ss.MaskedDenseEncoder(copy.deepcopy(model))  # fresh running stats
    r = run(ref, images, visible, out_grads)
    s = run(ss.sparsify(model, backend=backend), images, visible, out_grads)
    for i, (a, b) in enumerate(zip(s.outputs, r.outputs)):
        assert rel_max(a, b) <= FWD_TOL, f"stage {i}: {rel_max(a, b):.2e}"
    assert rel_norm(s.grads_flat(), r.grads_flat()) <= GRAD_TOL
    assert rel_norm(s.input_grad, r.input_grad) <= GRAD_TOL


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", _backends())
def test_cuda_mixed_precision_runs_and_stays_close(backend, dtype):
    model = build_model("resnet18").cuda().train()
    images, visible = _inputs(4, 224, 0.6)
    outs = {}
    for name, enc in (("sparse", ss.sparsify(model, backend=backend)), ("ref", ss.MaskedDenseEncoder(model))):
        with torch.autocast("cuda", dtype=dtype):
            feats = enc(images, visible)
        sum(f.float().mean() for f in feats).backward()
        outs[name] = [f.float() for f in feats]
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())
    for a, b in zip(outs["sparse"], outs["ref"]):
        assert rel_norm(a, b) < 0.1  # half precision: a sanity bound (a wrong layer rule gives ~1)


def test_cuda_peak_growth_sees_an_allocation():
    from spark_sparse.benchmarks.contenders import Call
    from spark_sparse.benchmarks.memory import cuda_peak_growth
    dev = torch.device("cuda")
    assert cuda_peak_growth(Call(lambda: torch.ones(2 ** 24, device=dev).sum()), dev) >= 4 * 2 ** 24


def test_bench_quick_on_cuda(tmp_path):
    from spark_sparse.benchmarks import report
    from spark_sparse.cli import main
    out = tmp_path / "res"
    assert main(["bench", "--quick", "--devices", "cuda", "--dtypes", "fp32", "bf16", "--no-progress",
                 "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    report.validate(doc)
    assert doc["environment"]["cuda"]["name"] == torch.cuda.get_device_name(0)
    recs = [r for r in doc["results"] if r["model"] == "resnet18"]
    assert {r["dtype"] for r in recs} == {"fp32", "bf16"}
    for rec in recs:
        assert rec["device"] == "cuda" and not rec["errors"], rec["errors"]
        mem = rec["peak_memory_bytes"]["fwd_bwd"]
        assert set(mem) == set(rec["contenders"]) and all(v > 0 for v in mem.values())
