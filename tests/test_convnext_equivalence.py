"""Sparse encoder == masked-dense reference for timm ConvNeXt V1 and V2 (forward at every stage,
every parameter gradient and the input gradient, fp32 and fp64; see equivalence.py).

Small images keep this cheap (the fp64 reference's depthwise convs run on a slow CPU path); every
model still sees several masks, image shapes, batch 1 and 3, train and eval. Norms, layer scales,
GRN and biases are randomised (``randomize_norms``) so no branch hides behind its init value.
"""
import pytest
import torch

import spark_sparse as ss
from tests.equivalence import check_equivalence, cached_model as model

# (batch, size, ratio, train). Together: batch 1 and 3, train and eval, ratios 0 to 0.6, four
# image shapes, DropPath on and off, Linear and 1×1-conv MLPs, LayerNorm channels first and last, GRN.
@pytest.mark.parametrize("batch,size,ratio,train", [(1, 64, 0.5, True), (3, (64, 96), 0.0, False)])
def test_convnext_atto(batch, size, ratio, train):
    """V1 with the 1×1-conv MLP and channels-first LayerNorm2d (conv_mlp=True)."""
    check_equivalence(model("convnext_atto"), "torch", batch, size, ratio, train)


def test_convnext_tiny():
    """V1 with the Linear MLP and channels-last LayerNorm (what S / B / L use)."""
    check_equivalence(model("convnext_tiny"), "torch", 1, 64, 0.5, False)


def test_convnextv2_atto():
    """V2: GRN per image over its active sites, no layer scale."""
    check_equivalence(model("convnextv2_atto"), "torch", 1, (96, 64), 0.6, False)


def test_drop_path_per_image():
    """DropPath on (rate 0.5, batch 3, train): one seeded draw per image and block on both sides."""
    check_equivalence(model("convnextv2_atto", drop_path_rate=0.5), "torch", 3, 64, 0.5, True, seed=3)


def test_empty_image_and_border_patches():
    """An image with no visible patch between two others (GRN and every layer must skip it, and
    the next image's rows must not shift), patches in the corners, a full image."""
    visible = torch.zeros(3, 2, 3, dtype=torch.bool)
    visible[0, 0, 0] = visible[0, 1, 2] = True
    visible[2] = True
    check_equivalence(model("convnextv2_atto"), "torch", 3, (64, 96), 0.0, True, visible=visible)


def test_spconv_backend_falls_back_to_our_depthwise_kernels():
    """spconv has no groups: ConvNeXt still runs, its depthwise convs on kernels/depthwise.py."""
    pytest.importorskip("spconv")
    check_equivalence(model("convnext_atto"), "spconv", 1, 64, 0.5, True)


@pytest.mark.parametrize("arch", ["convnext_atto", "convnext_tiny", "convnextv2_atto"])
def test_state_dict_is_the_backbone_minus_head(arch):
    dense = model(arch)
    encoder = ss.sparsify(dense)
    expected = {k: v for k, v in dense.state_dict().items() if not k.startswith(("head.", "norm_pre."))}
    got = encoder.state_dict()
    assert list(got) and set(got) == set(expected)
    for key, value in expected.items():
        assert got[key].shape == value.shape and torch.equal(got[key], value), key
    ss.MaskedDenseEncoder(dense).load_state_dict(got)  # and the reference takes it back


def test_unsupported_norm_is_refused_with_its_path():
    import timm
    with pytest.raises(ss.UnsupportedLayerError, match=r"stem\.1.*RmsNorm2d"):
        ss.sparsify(timm.create_model("convnext_atto_rms"))


def test_set_depthwise_switches_every_layer():
    """Every depthwise implementation gives the same encoder outputs; a wrong name is refused."""
    encoder = ss.sparsify(model("convnextv2_atto")).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 64, 96, generator=g)
    visible = ss.random_visible(3, (2, 3), 0.5, generator=g)
    with torch.no_grad():
        outs = {impl: encoder.set_depthwise(impl)(images, visible) for impl in ("table", "tiles", "dense", "auto")}
    for impl, maps in outs.items():
        for a, b in zip(maps, outs["table"]):
            assert (a - b).abs().max() <= 1e-5 * b.abs().max(), impl
    with pytest.raises(ValueError, match="choose one of"):
        encoder.set_depthwise("cudnn")
