"""spark-sparse import: timm and SparK files (timm-style, wrapped, withdecoder; ResNet and official ConvNeXt
names) become checkpoints whose encoder computes exactly what the source weights compute."""
import pytest
import timm
import torch

from tests.export_utils import (SIZE, cli, encoder_state, images_and_mask, spark_timm_style, spark_withdecoder,
                          stage_outputs, timm_to_official_convnext, trained_spark)
from spark_sparse.io.checkpoint import load as read_checkpoint
from spark_sparse.restore import build_model
from spark_sparse.spark_format import official_convnext_to_timm


@pytest.fixture(scope="module")
def sources():
    return {arch: trained_spark(arch, seed=3) for arch in ("resnet18", "convnext_atto")}


def import_file(tmp_path, obj, *args):
    src, out = tmp_path / "src.pth", tmp_path / "imported.pt"
    torch.save(obj, src)
    rc, stdout, stderr = cli("import", src, "--out", out, *args)
    assert rc == 0, stdout + stderr
    return read_checkpoint(str(out)), stdout


@pytest.mark.parametrize("arch,layout", [("resnet18", "timm_style"), ("resnet18", "wrapped"),
                                         ("convnext_atto", "timm_style"), ("resnet18", "withdecoder"),
                                         ("convnext_atto", "withdecoder")])
def test_spark_files_import_with_the_same_encoder_outputs(sources, tmp_path, arch, layout):
    source = sources[arch]
    if layout == "withdecoder":
        payload, out = import_file(tmp_path, spark_withdecoder(source, arch))  # --arch from the file
    else:
        state = spark_timm_style(source, arch)
        if arch.startswith("convnext"):
            assert any(k.startswith("downsample_layers.") for k in state), "the file must use the official names"
        obj = {"module": state} if layout == "wrapped" else state
        payload, out = import_file(tmp_path, obj, "--arch", arch, "--input-size", str(SIZE),
                                   "--decoder-width", "32")
    assert payload["arch"] == arch and payload["optimizer"] is None and payload["step"] == 0
    model = build_model(payload, "imported")
    assert all(torch.equal(a, b) for a, b in zip(encoder_state(model).values(), encoder_state(source).values()))
    images, visible = images_and_mask(seed=5)
    for got, want in zip(stage_outputs(model, images, visible), stage_outputs(source, images, visible)):
        assert torch.equal(got, want)
    if layout == "withdecoder":  # the decoder, densify layers and mask tokens come along: the same reconstruction
        assert "decoder from the file" in out and "epoch=41" in out
        config = payload["model_config"]
        assert (config["decoder_width"], config["input_size"]) == (32, SIZE)
        assert config["densify_norm"] == ("bn" if arch == "resnet18" else "ln")
        with torch.no_grad():
            loss, rec = model(images, visible, return_reconstruction=True)
            loss_src, rec_src = source(images, visible, return_reconstruction=True)
        assert torch.equal(loss, loss_src) and torch.equal(rec, rec_src)


@pytest.mark.parametrize("arch", ["convnext_atto", "convnextv2_atto"])
def test_official_convnext_names_map_like_timms_own_filter(arch):
    from timm.models.convnext import checkpoint_filter_fn
    model = timm.create_model(arch)
    official = timm_to_official_convnext(model.state_dict())
    assert "stages.0.0.dwconv.weight" in official and "head.weight" in official and "norm.weight" in official
    ours, theirs = official_convnext_to_timm(official), checkpoint_filter_fn(dict(official), model)
    assert ours.keys() == theirs.keys() == model.state_dict().keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_supervised_timm_checkpoint_continues_pretraining(tmp_path):
    """A timm training checkpoint (classifier head included) → import → pretrain --resume starts from it."""
    from tests.pretrain_utils import TINY, parse
    from spark_sparse.train.trainer import Trainer

    supervised = timm.create_model("resnet18", num_classes=10)
    old_style = {k: v for k, v in supervised.state_dict().items() if not k.endswith("num_batches_tracked")}
    obj = {"epoch": 90, "arch": "resnet18", "state_dict": old_style, "version": 2}  # as files before torch 0.4.1
    payload, out = import_file(tmp_path, obj, "--decoder-width", "32", "--input-size", str(SIZE))
    assert "left out: fc.weight, fc.bias" in out and payload["arch"] == "resnet18"

    resume = ["--arch", "resnet18", "--steps", "1", "--resume", str(tmp_path / "imported.pt")]
    with pytest.raises(ValueError, match=r"built with --decoder-width 32 \(this run: 64\)"):
        Trainer(parse(TINY + resume + ["--decoder-width", "64", "--out", str(tmp_path / "other")]))
    trainer = Trainer(parse(TINY + resume + ["--out", str(tmp_path / "run")]))
    assert trainer.step == 0 and trainer.resumed_from
    got = trainer.model.encoder.state_dict()
    for key, value in old_style.items():
        if not key.startswith("fc."):
            assert torch.equal(got[key], value), key
    assert int(got["bn1.num_batches_tracked"]) == 0
    assert trainer.fit() == 0 and trainer.step == 1

    # the trainer's own checkpoint exports, with the running statistics it accumulated, and verifies
    from spark_sparse.io import checkpoint as ckpt
    from spark_sparse.weights import read_file
    (_, path), = ckpt.list_checkpoints(str(tmp_path / "run"))
    rc, stdout, stderr = cli("export", path, "--out", tmp_path / "enc.safetensors", "--verify")
    assert rc == 0 and "verify passed" in stdout, stdout + stderr
    exported, _ = read_file(str(tmp_path / "enc.safetensors"))
    trained = ckpt.load(path)["model"]
    assert int(exported["bn1.num_batches_tracked"]) == 1
    assert all(torch.equal(v, trained["encoder." + k]) for k, v in exported.items())
