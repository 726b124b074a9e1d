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
    with pytest.raises(ValueError,
                       match="unknown backend 'cudnn'; choose one of auto, torch, gather-conv, tiles, spconv"):
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


def test_images_of_another_dtype_than_the_weights_are_named_before_any_layer(encoders):
    visible = torch.ones(1, 2, 2, dtype=torch.bool)
    for enc in encoders:
        for dtype in (torch.float16, torch.float64):
            with pytest.raises(TypeError, match=f"images are {dtype}, the encoder's weights torch.float32"):
                enc(torch.zeros(1, 3, 64, 64, dtype=dtype), visible)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast each layer casts for itself
        encoders[0](torch.zeros(1, 3, 64, 64, dtype=torch.bfloat16), visible)


def test_non_finite_pixels_in_masked_patches_reach_neither_encoder(encoders):
    images = torch.randn(1, 3, 64, 64)
    images[0, :, 32:, 32:] = float("inf")
    visible = torch.tensor([[[True, True], [True, False]]])
    for enc in encoders:
        assert all(torch.isfinite(out).all() for out in enc.eval()(images, visible))
        enc.train()


def test_spark_refuses_what_would_train_on_nothing_or_fail_later():
    with pytest.raises(TypeError, match=r"build_spark\(\) got an unexpected keyword argument 'mask_ration'"):
        ss.build_spark("resnet18", mask_ration=0.9)
    with pytest.raises(ValueError, match="channels .* was recorded for resnet18"):
        ss.build_spark("resnet18", channels=[1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\) .*a ratio of 0 learns nothing"):
        ss.build_spark("resnet18", decoder_width=32, mask_ratio=0.0)
    with pytest.raises(TypeError, match="SparK takes an encoder made from a timm backbone"):
        ss.SparK(timm.create_model("resnet18"))
    with pytest.raises(ValueError, match="this encoder takes 1"):
        ss.SparK(ss.sparsify(timm.create_model("resnet18", in_chans=1)), decoder_width=32)
    model = ss.build_spark("resnet18", decoder_width=32, mask_ratio=0.1)
    with pytest.raises(ValueError, match="mask_ratio at image size 64×64: 0.1 hides none of the 2×2 patches"):
        model(torch.randn(2, 3, 64, 64))


def test_macs_and_masks_take_only_what_they_can_use(encoders):
    enc = ss.sparsify(timm.create_model("resnet18", in_chans=1))
    assert enc.macs(torch.ones(1, 2, 2, dtype=torch.bool)) > 0  # a 1-channel stem: counted on 1-channel images
    with pytest.raises(TypeError, match=r"\(B, h, w\) bool tensor"):
        encoders[0].macs(torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch must be a whole number"):
        ss.random_visible(2.7, 2, 0.5)
    with pytest.raises(ValueError, match="grid must be a whole number"):
        ss.random_visible(2, 2.5, 0.5)
    with pytest.raises(TypeError, match="register_layer takes layer classes"):
        ss.register_layer("Mish", sparse=None, masked=None)


def test_a_block_program_that_misses_a_layer_is_refused():
    from timm.models.resnet import BasicBlock
    from spark_sparse.registry import _REGISTRY
    model = timm.create_model("resnet18")
    saved = _REGISTRY[BasicBlock]
    try:
        with pytest.warns(UserWarning, match="registered again"):
            ss.register_block(BasicBlock, ss.BlockProgram(
                main=("conv1", "bn1", "drop_block", "act1", "aa", "conv2", "bn_2"), shortcut="downsample", post="act2"))
        with pytest.raises(ValueError, match=r"layer1.0 \(BasicBlock\): the program registered for it names \['bn_2"):
            ss.sparsify(model)
        with pytest.raises(ValueError, match="names \\['bn_2'\\]"):
            ss.MaskedDenseEncoder(model)(torch.zeros(1, 3, 64, 64), torch.ones(1, 2, 2, dtype=torch.bool))
        with pytest.warns(UserWarning):
            ss.register_block(BasicBlock, ss.BlockProgram(
                main=("conv1", "bn1", "drop_block", "act1", "aa", "conv2"), shortcut="downsample", post="act2"))
        with pytest.raises(ValueError, match=r"never runs its child\(ren\) \['bn2'\]"):
            ss.sparsify(model)
    finally:
        _REGISTRY[BasicBlock] = saved
