"""MAC counts are exact: equal to torch's flop counter unmasked, and scale with the visible fraction."""
import pytest
import timm
import torch

import spark_sparse as ss
from spark_sparse.flops import dense_macs, sparse_macs
from spark_sparse.layers.conv import SparseConv2d
from spark_sparse.routing.rules import ROWS_CONV_MIN


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnet26d"])
def test_unmasked_equals_torch_flop_counter(arch):
    model = timm.create_model(arch)
    enc = ss.sparsify(model)
    visible = torch.ones(2, 7, 7, dtype=torch.bool)
    assert enc.macs(visible) == dense_macs(model, 2, (224, 224))


@pytest.mark.parametrize("ratio", [0.6, 0.9])
def test_masked_scales_with_visible_fraction(ratio):
    model = timm.create_model("resnet50")
    enc = ss.sparsify(model)
    visible = ss.random_visible(3, (7, 8), ratio, generator=torch.Generator().manual_seed(0))
    kept = int(visible.sum())
    # every layer's active sites are exactly the visible fraction of its dense sites
    assert enc.macs(visible) * (3 * 56) == dense_macs(model, 3, (224, 256)) * kept
    counts = sparse_macs(enc, visible)
    assert counts["total"] == sum(counts["layers"].values())
    assert counts["layers"]["conv1"] == kept * 16 * 16 * 49 * 3 * 64
    # each conv's count comes with the router's choice for it (fixed rules here, fp32 on the CPU)
    convs = [p for p, m in enc.named_modules() if isinstance(m, SparseConv2d)]
    assert sorted(counts["routes"]) == sorted(convs)
    assert counts["routes"]["conv1"] == "tiles"
    # layer1's 1×1 convs: kept·64 rows at stride 4, oneDNN's 1×1 conv from ROWS_CONV_MIN rows on
    pointwise = "pointwise-conv" if kept * 64 >= ROWS_CONV_MIN else "matmul"
    assert counts["routes"]["layer1.0.conv1"] == pointwise and counts["routes"]["layer4.0.conv1"] == "matmul"
    assert counts["routes"]["layer4.0.conv2"] == "torch"


def test_counting_leaves_no_trace():
    enc = ss.sparsify(timm.create_model("resnet18")).train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    enc.macs(torch.ones(1, 7, 7, dtype=torch.bool))
    assert enc.training
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k


_convnexts = {}


def convnext(arch):
    if arch not in _convnexts:
        _convnexts[arch] = timm.create_model(arch)
    return _convnexts[arch]


@pytest.mark.parametrize("arch", ["convnext_atto", "convnext_tiny", "convnextv2_atto"])
def test_convnext_unmasked_equals_torch_flop_counter(arch):
    """Stem/downsample (patchify), depthwise 7×7 (groups), 1×1-conv MLP (atto) and Linear MLP (tiny)."""
    model = convnext(arch)
    enc = ss.sparsify(model)
    visible = torch.ones(2, 3, 2, dtype=torch.bool)
    assert enc.macs(visible) == dense_macs(model, 2, (96, 64))


@pytest.mark.parametrize("arch,mlp", [("convnext_atto", "conv"), ("convnext_tiny", "linear")])
def test_convnext_layers_counted_on_active_sites(arch, mlp):
    model = convnext(arch)
    enc = ss.sparsify(model)
    visible = ss.random_visible(3, (3, 4), 0.6, generator=torch.Generator().manual_seed(0))
    kept = int(visible.sum())
    layers = sparse_macs(enc, visible)["layers"]
    c = enc.channels[0]
    sites = kept * 8 * 8  # stride 4: an 8×8 block per visible patch
    assert layers["stem.0"] == sites * 4 * 4 * 3 * c
    assert layers["stages.0.blocks.0.conv_dw"] == sites * 7 * 7 * c   # depthwise: one input channel each
    # counted whether it is a 1×1 conv (atto) or a Linear (tiny)
    assert layers["stages.0.blocks.0.mlp.fc1"] == sites * c * 4 * c
    assert layers["stages.1.downsample.1"] == kept * 4 * 4 * 2 * 2 * c * enc.channels[1]
    assert enc.macs(visible) * (3 * 12) == dense_macs(model, 3, (96, 128)) * kept
