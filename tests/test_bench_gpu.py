"""The benchmark's CUDA paths (benchmarks/gpu.sh runs these; skipped without a GPU)."""
import json

import pytest
import torch

from spark_sparse.benchmarks import schema
from spark_sparse.benchmarks.contenders import Call
from spark_sparse.cli import main


def needs_cuda(test):
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test))


@needs_cuda
def test_cuda_peak_growth_sees_an_allocation():
    from spark_sparse.benchmarks.memory import cuda_peak_growth
    dev = torch.device("cuda")
    assert cuda_peak_growth(Call(lambda: torch.ones(2 ** 24, device=dev).sum()), dev) >= 4 * 2 ** 24


@needs_cuda
def test_bench_quick_on_cuda(tmp_path):
    out = tmp_path / "res"
    assert main(["bench", "--quick", "--devices", "cuda", "--dtypes", "fp32", "bf16", "--no-progress",
                 "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    schema.validate(doc)
    assert doc["environment"]["cuda"]["name"] == torch.cuda.get_device_name(0)
    recs = [r for r in doc["results"] if r["model"] == "resnet18"]
    assert {r["dtype"] for r in recs} == {"fp32", "bf16"}
    for rec in recs:
        assert rec["device"] == "cuda" and not rec["errors"], rec["errors"]
        mem = rec["peak_memory_bytes"]["fwd_bwd"]
        encoders = {n for n, c in rec["contenders"].items() if "modes" not in c}
        assert set(mem) == encoders and all(v > 0 for v in mem.values())


