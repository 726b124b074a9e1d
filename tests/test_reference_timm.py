"""The masked-dense reference and the sparse encoder are timm itself when nothing is masked.

The equivalence tests compare the sparse encoder with the masked-dense reference; both read the
same block programs (models/resnet.py, models/convnext.py), so a wrong order in a program would
pass them. Here both are compared with timm's own forward (``forward_intermediates`` at the stages
the encoder plan takes from ``feature_info``, as benchmarks/contenders.py's DenseEncoder runs them)
with every patch visible: fp64, eval and train mode, stage maps and, in train mode, the BatchNorm
running statistics the forward leaves behind.
"""
import copy

import pytest
import torch

import spark_sparse as ss
from spark_sparse.plan import STAGE_STRIDES
from tests.equivalence import cached_model, rel_max

TOL = 1e-12  # max-relative, fp64; the implementations agree to ~1e-15 here
# one basic-block ResNet, two bottleneck ones (plain and deep stem with average-pool shortcuts),
# ConvNeXt V1 (two sizes) and V2 (GRN)
ARCHS = ["resnet18", "resnet50", "resnet26d", "convnext_atto", "convnext_tiny", "convnextv2_atto"]


def stage_indices(model):
    """The feature_info positions of the encoder's stages (timm's forward_intermediates indices)."""
    return [i for i, f in enumerate(model.feature_info) if f["reduction"] in STAGE_STRIDES]


def timm_stages(model, images):
    return model.forward_intermediates(images, indices=stage_indices(model), intermediates_only=True)


def running_stats(module):
    return {n: b.detach().clone() for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var"))}


def inputs(batch=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g, dtype=torch.float64)
    return images, torch.ones(batch, size // 32, size // 32, dtype=torch.bool)


@pytest.mark.parametrize("kind", ["masked_dense", "sparse"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("arch", ARCHS)
def test_everything_visible_is_timm(arch, train, kind):
    model = copy.deepcopy(cached_model(arch)).double().train(train)
    encoder = ss.MaskedDenseEncoder(model) if kind == "masked_dense" else ss.sparsify(model)
    encoder = encoder.double().train(train)
    before = running_stats(model)
    assert running_stats(encoder).keys() == before.keys()
    images, visible = inputs()
    with torch.no_grad():
        ours = encoder(images, visible)
        theirs = timm_stages(model, images)
    assert len(ours) == len(theirs) == len(STAGE_STRIDES)
    for i, (o, t) in enumerate(zip(ours, theirs)):
        o = o.dense() if hasattr(o, "dense") else o
        assert o.shape == t.shape, (i, o.shape, t.shape)
        err = rel_max(o, t)
        print(f"{arch} {kind} {'train' if train else 'eval'} stage {i}: {err:.1e}")
        assert err <= TOL, f"stage {i}: {err:.2e} from timm"
    after, ours_after = running_stats(model), running_stats(encoder)
    if train:
        assert all(not torch.equal(before[n], after[n]) for n in before), "timm's forward updates the statistics"
        for n in after:
            err = rel_max(ours_after[n], after[n])
            assert err <= TOL, f"{n}: {err:.2e} from timm's train-mode update"
    else:
        assert all(torch.equal(before[n], ours_after[n]) and torch.equal(before[n], after[n]) for n in before)
