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


def test_check_arch_accepts_timm_names_with_or_without_a_tag():
    from spark_sparse.archs import check_arch
    assert check_arch("resnet50") == "resnet50"
    assert check_arch("resnet50.a1_in1k") == "resnet50.a1_in1k"


def test_unknown_arch_names_the_option_and_the_closest_names():
    from spark_sparse.archs import UnknownArchError, check_arch
    with pytest.raises(UnknownArchError, match=r"--models 'resnet51': timm has no such model \(closest: .*resnet50"):
        check_arch("resnet51", "--models")
    with pytest.raises(ValueError, match=r"'qwertyuiop': timm has no such model\. spark_sparse runs timm ResNets"):
        check_arch("qwertyuiop")


@pytest.mark.parametrize("argv,prefix", [
    (["pretrain", "--arch", "convnext_tinny"], "--arch 'convnext_tinny'"),
    (["demo", "--arch", "convnext_tinny"], "--arch 'convnext_tinny'"),
    (["import", "missing.pth", "--arch", "convnext_tinny"], "--arch 'convnext_tinny'"),
    (["bench", "--models", "convnext_tinny", "--devices", "cpu"], "--models 'convnext_tinny'"),
    (["bench", "--profile-model", "convnext_tinny", "--devices", "cpu"], "--profile-model 'convnext_tinny'"),
])
def test_commands_refuse_an_unknown_arch_before_writing(tmp_path, monkeypatch, capsys, argv, prefix):
    """A typo in a model name ends with status 2 and one line suggesting the right name (not timm's
    traceback), before anything is built or written."""
    from spark_sparse.cli import main
    monkeypatch.chdir(tmp_path)
    out = ["--out", str(tmp_path / "out")] if argv[0] in ("pretrain", "import", "bench") else []
    assert main(argv + out) == 2
    err = capsys.readouterr().err
    assert prefix in err and "closest: convnext_tiny" in err
    assert list(tmp_path.iterdir()) == []
