"""The sparse encoder gives the same answer with 1 and 2 threads, and the same answer twice."""
import copy

import pytest
import torch

import spark_sparse as ss
from tests.equivalence import build_model, rel_max, run


@pytest.mark.parametrize("backend", ["torch", "spconv"])
def test_thread_count_does_not_change_results(backend):
    if backend == "spconv":
        pytest.importorskip("spconv")
    model = build_model("resnet18").train()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 128, 160, generator=g)
    visible = ss.random_visible(2, (4, 5), 0.6, generator=g)
    out_grads = [torch.randn(o.shape, generator=g) for o in ss.MaskedDenseEncoder(model)(images, visible)]
    results = []
    for threads in (1, 2, 2):
        torch.set_num_threads(threads)
        results.append(run(ss.sparsify(copy.deepcopy(model), backend=backend), images, visible, out_grads))
    one, two, again = results
    for a, b in zip(two.outputs, again.outputs):
        assert torch.equal(a, b), "two runs with the same thread count must be bitwise equal"
    for n in two.grads:
        assert torch.equal(two.grads[n], again.grads[n]), n
    for a, b in zip(one.outputs, two.outputs):
        assert rel_max(a, b) < 1e-5
    for n in one.grads:
        assert rel_max(one.grads[n], two.grads[n]) < 1e-4, n
    assert rel_max(one.input_grad, two.input_grad) < 1e-4
