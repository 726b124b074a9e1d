"""Commands never write over their input, overwrite an existing file only with --force, refuse bad
options before writing anything, write files with ordinary permissions, and tell a wrong kind of
file by its content."""
import argparse
import os

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from tests.export_utils import cli, trained_spark, write_checkpoint
from spark_sparse.files import OutputError, check_output


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(trained_spark("resnet18", steps=0), "resnet18",
                            str(tmp_path_factory.mktemp("ckpt") / "ckpt.pt"))


@pytest.fixture(scope="module")
def timm_state():
    return {k: v for k, v in timm.create_model("resnet18").state_dict().items() if not k.startswith("fc.")}


def test_export_over_its_checkpoint_is_refused_even_with_force(checkpoint):
    before = open(checkpoint, "rb").read()
    for extra in ([], ["--force"]):
        rc, out, err = cli("export", checkpoint, "--out", checkpoint, *extra)
        assert rc == 2 and "is also an input" in err, out + err
    assert open(checkpoint, "rb").read() == before


def test_export_overwrites_only_with_force_and_writes_an_ordinary_file(checkpoint, tmp_path):
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"someone's file")
    rc, _, err = cli("export", checkpoint, "--out", out)
    assert rc == 2 and "exists; pass --force" in err and out.read_bytes() == b"someone's file"
    old = os.umask(0o022)
    try:
        assert cli("export", checkpoint, "--out", out, "--force")[0] == 0
        assert cli("export", checkpoint, "--out", tmp_path / "new.pth")[0] == 0
    finally:
        os.umask(old)
    assert os.stat(out).st_mode & 0o777 == 0o644 and os.stat(tmp_path / "new.pth").st_mode & 0o777 == 0o644
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


@pytest.mark.parametrize("options,message", [(["--verify-batch", "0"], "--verify-batch must be >= 1"),
                                             (["--verify-size", "100"], "--verify-size must be a positive multiple"),
                                             (["--verify-size", "0"], "--verify-size must be a positive multiple"),
                                             (["--tolerance", "-1"], "--tolerance must be >= 0")])
def test_export_options_are_checked_before_writing(checkpoint, tmp_path, options, message):
    out = tmp_path / "w.safetensors"
    rc, _, err = cli("export", checkpoint, "--out", out, "--verify", *options)
    assert rc == 2 and message in err and not out.exists()


@pytest.mark.parametrize("name,fmt", [("w.pth", "safetensors"), ("w.bin", "safetensors"), ("w.safetensors", "pth")])
def test_export_refuses_a_format_timm_would_not_read_under_that_name(checkpoint, tmp_path, name, fmt):
    out = tmp_path / name
    rc, _, err = cli("export", checkpoint, "--out", out, "--format", fmt)
    assert rc == 2 and f"--format {fmt} does not fit --out" in err and not out.exists()


def test_export_writes_what_timm_reads_under_any_name(checkpoint, tmp_path, timm_state):
    """timm loads safetensors only from *.safetensors and torch.load's anything else: a name without
    one of the usual endings gets a torch.save state dict, which timm's own loader reads."""
    out = tmp_path / "weights"
    assert cli("export", checkpoint, "--out", out)[0] == 0
    model = timm.create_model("resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(out)), num_classes=0)
    assert set(model.state_dict()) == set(timm_state)


def test_export_to_a_folder_or_below_a_file_is_a_clear_error(checkpoint, tmp_path):
    rc, _, err = cli("export", checkpoint, "--out", tmp_path)
    assert rc == 2 and "is a folder" in err
    (tmp_path / "plain").write_text("x")
    rc, _, err = cli("export", checkpoint, "--out", tmp_path / "plain" / "w.pth")
    assert rc == 2 and "is not a folder" in err


def test_import_refuses_its_input_and_existing_files(tmp_path, timm_state):
    src = tmp_path / "w.pth"
    torch.save(timm_state, src)
    before = src.read_bytes()
    rc, _, err = cli("import", src, "--out", src, "--force")
    assert rc == 2 and "is also an input" in err and src.read_bytes() == before
    (tmp_path / "taken.pt").write_bytes(b"x")
    rc, _, err = cli("import", src, "--out", tmp_path / "taken.pt")
    assert rc == 2 and "exists; pass --force" in err


def test_import_refuses_an_input_size_of_zero(tmp_path, timm_state):
    """0 once fell through to the file's record or 224 (``size or 224``) and wrote a checkpoint."""
    src = tmp_path / "w.pth"
    torch.save(timm_state, src)
    rc, _, err = cli("import", src, "--out", tmp_path / "c.pt", "--input-size", "0")
    assert rc == 2 and "input size 0x0" in err and not (tmp_path / "c.pt").exists()


@pytest.mark.parametrize("width", ["0", "-8", "16"])
def test_import_refuses_a_decoder_width_too_small_to_halve(tmp_path, timm_state, width):
    """0 once fell through to the default 768 (``width or 768``) and wrote a checkpoint."""
    src = tmp_path / "w.pth"
    torch.save(timm_state, src)
    rc, _, err = cli("import", src, "--out", tmp_path / "c.pt", "--decoder-width", width)
    assert rc == 2 and f"decoder width {width} is too small" in err and not (tmp_path / "c.pt").exists()


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64, torch.uint8])
def test_import_refuses_weights_that_are_not_floating_point(tmp_path, timm_state, dtype):
    state = dict(timm_state)
    state["layer1.0.conv1.weight"] = (state["layer1.0.conv1.weight"] * 100).to(dtype)
    src = tmp_path / "w.pth"
    torch.save(state, src)
    rc, _, err = cli("import", src, "--arch", "resnet18", "--out", tmp_path / "out.pt")
    assert rc == 2 and not (tmp_path / "out.pt").exists()
    assert f"layer1.0.conv1.weight is {dtype}" in err and "floating point" in err


def test_import_accepts_every_float_width_and_keeps_the_step_counter_integer(tmp_path, timm_state):
    state = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in timm_state.items()}
    src = tmp_path / "w.safetensors"
    from safetensors.torch import save_file
    save_file(state, str(src))
    assert cli("import", src, "--arch", "resnet18", "--out", tmp_path / "out.pt", "--input-size", "64")[0] == 0
    model = torch.load(tmp_path / "out.pt", weights_only=True)["model"]
    assert model["encoder.bn1.num_batches_tracked"].dtype == torch.long
    assert model["encoder.conv1.weight"].dtype == torch.float32


def test_the_file_kind_comes_from_the_content_not_the_name(tmp_path, timm_state, checkpoint):
    disguised = tmp_path / "w.safetensors"  # a torch.save file with a safetensors name
    torch.save(timm_state, disguised)
    rc, out, err = cli("import", disguised, "--arch", "resnet18", "--out", tmp_path / "a.pt", "--input-size", "64")
    assert rc == 0, out + err

    from safetensors.torch import save_file
    save_file(timm_state, str(tmp_path / "timm.safetensors"))
    rc, _, err = cli("export", tmp_path / "timm.safetensors", "--out", tmp_path / "x.pth")
    assert rc == 2 and "safetensors weights file" in err and "spark-sparse import" in err
    torch.save(timm_state, tmp_path / "timm.pth")
    rc, _, err = cli("export", tmp_path / "timm.pth", "--out", tmp_path / "x.pth")
    assert rc == 2 and "not a spark_sparse pre-training checkpoint" in err and "spark-sparse import" in err

    torch.save({"args": argparse.Namespace(lr=1.0), "state_dict": timm_state}, tmp_path / "pickled.pth")
    rc, _, err = cli("export", tmp_path / "pickled.pth", "--out", tmp_path / "x.pth")
    assert rc == 2 and "intact file that holds pickled Python objects" in err and "truncated" not in err


def test_reconstruct_refuses_bad_batches_bombs_and_outputs_over_inputs(checkpoint, tmp_path):
    photo = tmp_path / "grid.png"  # the name of the grid the command writes
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(photo)
    before = photo.read_bytes()
    rc, _, err = cli("reconstruct", checkpoint, photo, "--out", tmp_path, "--force")
    assert rc == 2 and "is also an input" in err and photo.read_bytes() == before
    assert cli("reconstruct", checkpoint, photo, "--out", tmp_path / "vis")[0] == 0
    assert sorted(os.listdir(tmp_path / "vis")) == ["grid-0.png", "grid.png"], "the image's PNG is not the grid"

    for batch in ("0", "-1"):
        rc, _, err = cli("reconstruct", checkpoint, photo, "--out", tmp_path / "b", "--batch", batch)
        assert rc == 2 and "--batch must be >= 1" in err

    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 M pixels in a few kB
    rc, _, err = cli("reconstruct", checkpoint, bomb, "--out", tmp_path / "c")
    assert rc == 2 and "bomb.png: refused" in err

    rc, _, err = cli("reconstruct", checkpoint, photo, "--out", tmp_path / "d", "--mask-ratio", "0.9")
    assert rc == 2 and "0 of the 2×2 patches visible" in err


def test_bench_refuses_results_of_another_run_without_force(tmp_path):
    from spark_sparse.commands.bench import check_outputs
    check_outputs(argparse.Namespace(out=str(tmp_path), force=False))  # an empty folder: fine
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(OutputError, match="exists; pass --force"):
        check_outputs(argparse.Namespace(out=str(tmp_path), force=False))
    check_outputs(argparse.Namespace(out=str(tmp_path), force=True))


def test_one_output_rule(tmp_path):
    a = tmp_path / "a"
    a.write_text("x")
    os.symlink(a, tmp_path / "link")
    with pytest.raises(OutputError, match="also an input"):
        check_output(str(tmp_path / "link"), inputs=[str(a)], force=True)
    check_output(str(tmp_path / "new" / "deeper" / "f"))  # folders are created on writing


def test_reconstruct_names_every_image_apart_and_refuses_bad_options_before_loading(checkpoint, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    for name in ("a-2.png", "a.png", "a.jpg"):  # the clash of a.png and a.jpg must not take a-2's name
        Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(images / name)
    strip = images / "strip.png"  # a very elongated image: cropped before resizing, no huge intermediate
    Image.fromarray(np.full((1, 3000, 3), 200, np.uint8)).save(strip)
    paths = [images / n for n in ("a-2.png", "a.png", "a.jpg")] + [strip]
    rc, out, err = cli("reconstruct", checkpoint, *paths, "--out", tmp_path / "vis", "--size", "64")
    assert rc == 0, out + err
    assert sorted(os.listdir(tmp_path / "vis")) == ["a-2.png", "a-3.png", "a.png", "grid.png", "strip.png"]

    for options, message in ((["--seed", str(2**32)], "--seed must be in 0 … 4294967295"),
                             (["--size", "0"], "--size must be a multiple of 32 from 64 to 1024, got 0"),
                             (["--size", "32"], "from 64 to 1024, got 32"),
                             (["--size", "65536"], "from 64 to 1024, got 65536"),
                             (["--device", "foo"], "--device 'foo': not a device name"),
                             (["--mask-ratio", "1.5"], "--mask-ratio must be in [0, 1)")):
        rc, _, err = cli("reconstruct", checkpoint, paths[0], "--out", tmp_path / "x", *options)
        assert rc == 2 and message in err and "Traceback" not in err, (options, err)
    rc, _, err = cli("reconstruct", checkpoint, paths[0], "--out", "")
    assert rc == 2 and "--out is empty" in err
    rc, _, err = cli("reconstruct", tmp_path, paths[0], "--out", tmp_path / "y")
    assert rc == 2 and "a folder, not a checkpoint file" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_sixteen_bit_grayscale_is_scaled_not_clipped_to_white(tmp_path):
    from spark_sparse.images import open_rgb
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    rgb = np.asarray(open_rgb(str(tmp_path / "g16.png")))
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], np.rint(ramp / 257.0).astype(np.uint8))
    Image.fromarray(np.arange(256, dtype=np.int32).reshape(16, 16)).save(tmp_path / "i8.tif")  # mode I, 8-bit values
    assert Image.open(tmp_path / "i8.tif").mode == "I"
    eight_bit = np.asarray(open_rgb(str(tmp_path / "i8.tif")))[..., 1]
    np.testing.assert_array_equal(eight_bit, np.arange(256).reshape(16, 16))
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match="32-bit floating-point image"):
        open_rgb(str(tmp_path / "f.tif"))


def test_export_verify_that_could_compare_nothing_is_refused_before_writing(checkpoint, tmp_path):
    out = tmp_path / "w.pth"
    rc, _, err = cli("export", checkpoint, "--out", out, "--verify", "--verify-size", "32")  # 1 patch, none kept
    assert rc == 2 and "keeps no patch visible, so nothing would be compared" in err and not out.exists()


def test_seeds_outside_what_torch_keeps_are_refused_by_import_and_export(checkpoint, timm_state, tmp_path):
    torch.save(timm_state, tmp_path / "r18.pth")
    rc, _, err = cli("import", tmp_path / "r18.pth", "--arch", "resnet18", "--out", tmp_path / "c.pt",
                     "--seed", str(2**32))
    assert rc == 2 and "--seed must be in 0 … 4294967295" in err and not (tmp_path / "c.pt").exists()
    rc, _, err = cli("export", checkpoint, "--out", tmp_path / "w.pth", "--verify", "--seed", "-1")
    assert rc == 2 and "--seed must be in 0 … 4294967295" in err and not (tmp_path / "w.pth").exists()
