"""Bad input gets an error that says what was wrong and what is accepted."""
import pytest
import timm
import torch
from torch import nn

import spark_sparse as ss


@pytest.fixture(scope="module")
def encoders():
    model = timm.create_model("resnet18")
    return ss.sparsify(model), ss.MaskedDenseEncoder(model)


@pytest.mark.parametrize("shape", [(1, 3, 224, 200), (1, 3, 100, 224), (1, 3, 16, 16)])
def test_size_not_multiple_of_stride(encoders, shape):
    for enc in encoders:
        with pytest.raises(ValueError, match=r"not a multiple of 32 \(the backbone stride\)"):
            enc(torch.zeros(shape), torch.ones(1, shape[2] // 32, shape[3] // 32, dtype=torch.bool))


@pytest.mark.parametrize("visible,match", [
    (torch.ones(1, 7, 6, dtype=torch.bool), r"shape \(B, H/32, W/32\) = \(1, 7, 7\)"),
    (torch.ones(2, 7, 7, dtype=torch.bool), r"= \(1, 7, 7\)"),
    (torch.ones(1, 7, 7), "bool tensor"),
    (torch.ones(1, 7, 7, dtype=torch.uint8), "bool tensor"),
])
def test_bad_visible(encoders, visible, match):
    for enc in encoders:
        with pytest.raises((ValueError, TypeError), match=match):
            enc(torch.zeros(1, 3, 224, 224), visible)


def test_images_must_be_float_nchw(encoders):
    enc = encoders[0]
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        enc(torch.zeros(3, 224, 224), torch.ones(1, 7, 7, dtype=torch.bool))
    with pytest.raises(TypeError, match="floating-point"):
        enc(torch.zeros(1, 3, 224, 224, dtype=torch.uint8), torch.ones(1, 7, 7, dtype=torch.bool))


def test_unsupported_layer_names_its_path():
    model = timm.create_model("resnet18")
    model.layer2[1].act1 = nn.PReLU()  # has no per-site rule registered
    with pytest.raises(ss.UnsupportedLayerError, match=r"'layer2\.1\.act1' \(torch\.nn\.modules\.activation\.PReLU\)"):
        ss.sparsify(model)


def test_squeeze_excitation_is_refused():
    with pytest.raises(ss.UnsupportedLayerError, match=r"layer1\.0\.se"):
        ss.sparsify(timm.create_model("seresnet18"))


def test_group_norm_is_refused():
    model = timm.create_model("resnet18")
    model.bn1 = nn.GroupNorm(8, 64)
    with pytest.raises(ss.UnsupportedLayerError, match=r"'bn1' .*GroupNorm"):
        ss.sparsify(model)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'cudnn'; choose one of auto, torch, tiles, spconv"):
        ss.sparsify(timm.create_model("resnet18"), backend="cudnn")


def test_model_without_stages():
    with pytest.raises(TypeError, match="no timm feature_info"):
        ss.sparsify(nn.Sequential(nn.Conv2d(3, 8, 3)))


def test_conv_that_changes_resolution_is_refused():
    model = timm.create_model("resnet18")
    model.layer1[0].conv1 = nn.Conv2d(64, 64, 3, padding=0, bias=False)
    with pytest.raises(ss.UnsupportedLayerError, match=r"layer1\.0\.conv1.*H/stride"):
        ss.sparsify(model)
