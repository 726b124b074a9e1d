"""Bad input to import / export / reconstruct: each a clear error that names what differs."""
import argparse
import re

import pytest
import timm
import torch

from tests.export_utils import cli, trained_spark, write_checkpoint
from spark_sparse.weights import WeightsError, check_encoder_state


@pytest.fixture(scope="module")
def resnet18_state():
    return {k: v for k, v in timm.create_model("resnet18").state_dict().items() if not k.startswith("fc.")}


@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory):
    return write_checkpoint(trained_spark("resnet18", steps=0), "resnet18",
                            str(tmp_path_factory.mktemp("ckpt") / "ckpt.pt"))


def run_import(tmp_path, obj, *args, name="w.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return cli("import", path, "--out", tmp_path / "out.pt", *args)


def test_weights_of_another_architecture_name_the_one_they_look_like(tmp_path, resnet18_state):
    rc, out, err = run_import(tmp_path, resnet18_state, "--arch", "resnet50")
    assert rc == 2 and not (tmp_path / "out.pt").exists()
    assert "do not fit a resnet50 encoder" in err
    assert re.search(r"\d+ missing \(layer1\.0\.conv3\.weight", err), err
    assert re.search(r"\d+ of another shape \(layer1\.0\.conv1\.weight: file \(64, 64, 3, 3\) vs resnet50 "
                     r"\(64, 64, 1, 1\)", err), err
    assert "They look like resnet18 (a ResNet with basic blocks, depths 2-2-2-2)" in err

    atto = timm.create_model("convnext_atto").state_dict()
    with pytest.raises(WeightsError, match=r"of another shape \(stem\.0\.weight: file \(40, 3, 4, 4\) vs "
                                           r"convnext_femto \(48, 3, 4, 4\).*They look like convnext_atto"):
        check_encoder_state({k: v for k, v in atto.items() if not k.startswith("head.")}, "convnext_femto", "x")


def test_missing_extra_and_misshapen_keys_are_listed(tmp_path, resnet18_state):
    state = dict(resnet18_state)
    del state["layer1.0.bn1.running_var"]
    state["layer9.extra.weight"] = torch.zeros(3)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    rc, out, err = run_import(tmp_path, state, "--arch", "resnet18")
    assert rc == 2
    assert "1 missing (layer1.0.bn1.running_var)" in err
    assert "1 unexpected (layer9.extra.weight)" in err
    assert "1 of another shape (conv1.weight: file (64, 3, 3, 3) vs resnet18 (64, 3, 7, 7))" in err


def test_truncated_files_are_refused(tmp_path, resnet18_state, resnet18_checkpoint):
    from safetensors.torch import save_file
    full = tmp_path / "full.pth"
    torch.save(resnet18_state, full)
    save_file(resnet18_state, str(tmp_path / "full.safetensors"))
    for name in ("full.pth", "full.safetensors"):
        data = (tmp_path / name).read_bytes()
        cut = tmp_path / ("cut." + name.split(".")[1])
        cut.write_bytes(data[: len(data) // 2])
        rc, out, err = cli("import", cut, "--arch", "resnet18", "--out", tmp_path / "out.pt")
        assert rc == 2 and "truncated or corrupt" in err and str(cut) in err, err

    data = open(resnet18_checkpoint, "rb").read()
    cut = tmp_path / "cut_ckpt.pt"
    cut.write_bytes(data[: len(data) // 3])
    for command in (("export", cut, "--out", tmp_path / "x.safetensors"),
                    ("reconstruct", cut, full, "--out", tmp_path / "vis")):
        rc, out, err = cli(*command)
        assert rc == 2 and "truncated or corrupt" in err and str(cut) in err, err


def test_checkpoint_whose_weights_are_another_architecture(tmp_path, resnet18_checkpoint):
    payload = torch.load(resnet18_checkpoint, weights_only=True)
    payload["arch"] = payload["model_config"]["arch"] = "resnet34"
    bad = tmp_path / "relabelled.pt"
    torch.save(payload, bad)
    rc, out, err = cli("export", bad, "--out", tmp_path / "x.safetensors")
    assert rc == 2 and not (tmp_path / "x.safetensors").exists()
    assert "do not fit a resnet34 encoder" in err and "They look like resnet18" in err


def test_wrong_kind_of_file_gets_a_pointer_to_what_is_accepted(tmp_path, resnet18_state, resnet18_checkpoint):
    weights = tmp_path / "weights.pth"
    torch.save(resnet18_state, weights)
    rc, out, err = cli("export", weights, "--out", tmp_path / "x.safetensors")
    assert rc == 2 and "not a spark_sparse pre-training checkpoint" in err and "spark-sparse import" in err

    rc, out, err = cli("import", resnet18_checkpoint, "--out", tmp_path / "again.pt")
    assert rc == 2 and "already a spark_sparse checkpoint" in err

    (tmp_path / "notes.txt").write_text("hello")
    rc, out, err = cli("import", tmp_path / "notes.txt", "--arch", "resnet18", "--out", tmp_path / "o.pt")
    assert rc == 2 and "not a weights file" in err

    # timm's training checkpoints pickle their argparse arguments: refused unless trusted
    obj = {"state_dict": resnet18_state, "args": argparse.Namespace(lr=0.1), "epoch": 3}
    rc, out, err = run_import(tmp_path, obj, "--arch", "resnet18", "--decoder-width", "32")
    assert rc == 2 and "--trust-file" in err
    rc, out, err = run_import(tmp_path, obj, "--arch", "resnet18", "--decoder-width", "32", "--trust-file")
    assert rc == 0, err

    (tmp_path / "broken.png").write_bytes(b"not an image")
    rc, out, err = cli("reconstruct", resnet18_checkpoint, tmp_path / "broken.png", "--out", tmp_path / "vis")
    assert rc == 2 and "broken.png: not a readable image" in err


def test_a_spark_file_and_the_command_line_must_agree(tmp_path):
    from tests.export_utils import spark_withdecoder
    obj = spark_withdecoder(trained_spark("resnet18", steps=0), "resnet18")
    rc, out, err = run_import(tmp_path, obj, "--arch", "resnet34")
    assert rc == 2 and "records architecture 'resnet18', --arch says 'resnet34'" in err
    rc, out, err = run_import(tmp_path, obj, "--decoder-width", "768")
    assert rc == 2 and "decoder width 32" in err
