"""The sparse SyncBatchNorm: in one process it computes exactly what the layers it replaces compute,
on every path (encoder rows, densify rows, dense decoder maps, the masked-dense reference encoder).
Across processes it is tested by the 2-process run in test_pretrain_runs.py."""
import copy

import pytest
import torch

import spark_sparse as ss
from tests.equivalence import build_model, rel_max
from spark_sparse.spark import SparK
from spark_sparse.train.sync_batchnorm import SparseSyncBatchNorm, convert_sync_batchnorm


@pytest.mark.parametrize("kind", ["sparse", "masked_dense"])
def test_sync_batchnorm_equals_the_layers_it_replaces(kind):
    backbone = build_model("resnet18")
    encoder = ss.sparsify(backbone, backend="torch") if kind == "sparse" else ss.MaskedDenseEncoder(backbone)
    plain = SparK(encoder, decoder_width=64).double().train()
    synced = convert_sync_batchnorm(copy.deepcopy(plain))
    converted = [n for n, m in synced.named_modules() if isinstance(m, SparseSyncBatchNorm)]
    assert len(converted) == 20 + 4 + 10  # encoder, densify, decoder
    assert list(plain.state_dict()) == list(synced.state_dict())
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 96, generator=g, dtype=torch.float64)
    visible = ss.random_visible(2, (2, 3), 0.5, generator=g)
    for model in (plain, synced):
        model(images, visible).backward()
    for (name, p), q in zip(plain.named_parameters(), synced.parameters()):
        assert rel_max(q.grad, p.grad) <= 1e-10, name
    for (name, b), c in zip(plain.named_buffers(), synced.buffers()):
        assert rel_max(c.double(), b.double()) <= 1e-10, name
    synced.eval(), plain.eval()
    with torch.no_grad():
        assert rel_max(synced(images, visible), plain(images, visible)) <= 1e-10
