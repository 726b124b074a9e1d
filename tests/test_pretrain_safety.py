"""pretrain refuses what cannot work before training starts, never loses logged steps a checkpoint
covers, counts unreadable files honestly, and walks each real data folder once."""
import json
import os

import pytest
import torch

from tests.pretrain_utils import TINY, make_image_folder, parse
from spark_sparse.io import checkpoint as ckpt
from spark_sparse.train.data import find_images
from spark_sparse.train.trainer import EXIT_BAD_INPUT, Trainer, pretrain


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(str(tmp_path_factory.mktemp("images")), count=16)


@pytest.mark.parametrize("options,message", [
    (["--mask-ratio", "0.0"], "--mask-ratio must be in (0, 1)"),
    (["--mask-ratio", "0.9"], "0 of the 2×2 patches visible"),  # 64 px: 4 patches, round(0.4) = 0 kept
    (["--mask-ratio", "0.1"], "hides none of the 2×2 patches"),
    (["--epochs", "0.05"], "rounds to 0 steps"),
    (["--device", "cuda:7" if torch.cuda.is_available() else "cuda"], "CUDA is not available"),
    (["--device", "tpu-ish"], "not a device name"),
    (["--data", ""], "--data is empty"),
    (["--seed", "-1"], "--seed must be in 0 … 4294967295"),
    (["--seed", str(2**32)], "--seed must be in 0 … 4294967295"),  # would draw what seed 0 draws
    (["--vis-images", "0"], "--vis-images must be >= 1"),
    (["--workers", "-1"], "--workers must be >= 0"),
    (["--arch", "resnet51"], "--arch 'resnet51': timm has no such model (closest: "),
    (["--lr", "-0.001"], "--lr must be > 0"),
    (["--base-lr", "0"], "--base-lr must be > 0"),
    (["--wd", "-0.1"], "--wd must be >= 0"),
    (["--wd-end", "nan"], "--wd-end must be >= 0"),
    (["--drop-path", "1.5"], "--drop-path must be in [0, 1)"),
    (["--clip", "nan"], "--clip must be a number"),
    (["--epochs", "nan"], "--epochs must be > 0"),
])
def test_impossible_runs_are_refused_before_training(data, tmp_path, capsys, options, message):
    if "cuda:7" in options and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a GPU 7")
    out = tmp_path / "run"
    length = [] if "--epochs" in options else ["--steps", "1"]
    assert pretrain(parse(["--data", data, *TINY, *length, "--out", str(out), *options])) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (out / "checkpoints").exists()


def test_an_out_that_is_a_file_is_refused_and_left_alone(data, tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    assert pretrain(parse(["--data", data, *TINY, "--steps", "1", "--out", str(path)])) == EXIT_BAD_INPUT
    assert "is a file; pass a folder" in capsys.readouterr().err
    assert path.read_text() == "mine"


def test_every_step_a_checkpoint_covers_is_on_disk_when_it_is_written(data, tmp_path, monkeypatch):
    """A SIGKILL right after a checkpoint must not lose the metrics of the steps it covers."""
    out = str(tmp_path / "run")
    logged_at_save = {}
    real = ckpt.save_atomic

    def spy(payload, path):
        with open(os.path.join(out, "metrics.jsonl")) as f:  # what another process (or a reboot) would see
            logged_at_save[payload["step"]] = [json.loads(line)["step"] for line in f]
        real(payload, path)

    monkeypatch.setattr(ckpt, "save_atomic", spy)
    torch.set_num_threads(1)
    args = ["--data", data, *TINY, "--steps", "3", "--ckpt-every", "2", "--out", out, "--log-every", "100"]
    assert Trainer(parse(args)).fit() == 0
    assert logged_at_save == {2: [1, 2], 3: [1, 2, 3]}


def test_unreadable_files_are_counted_once_each_and_every_read(tmp_path, capsys):
    root = make_image_folder(str(tmp_path / "data"), count=10)
    open(os.path.join(root, "class0", "broken.jpg"), "wb").write(b"\xff\xd8 not really a jpeg")
    open(os.path.join(root, "class1", "cut.png"), "wb").write(b"\x89PNG\r\n\x1a\n")
    torch.set_num_threads(1)
    out = str(tmp_path / "run")
    assert Trainer(parse(["--data", root, *TINY, "--epochs", "2", "--out", out])).fit() == 0  # 12 files, 2 epochs
    assert "2 unreadable image files skipped (4 reads)" in capsys.readouterr().out
    metrics = ckpt.load(ckpt.list_checkpoints(out)[-1][1])["metrics"]
    assert metrics["skipped_images"] == 4 and metrics["skipped_files"] == ["class0/broken.jpg", "class1/cut.png"]


def test_a_symlink_loop_under_data_lists_each_file_once(tmp_path):
    root = make_image_folder(str(tmp_path / "data"), count=4)
    os.symlink("..", os.path.join(root, "class0", "loop"))
    os.symlink(os.path.join(root, "class1"), os.path.join(root, "again"))
    found = find_images(root)
    real = [os.path.realpath(p) for p in found]
    assert len(found) == 4 and len(set(real)) == 4, found


def test_stop_signals_map_to_their_exit_codes():
    import signal

    from spark_sparse.train.signals import StopSignals
    term, interrupt = StopSignals(), StopSignals()
    term.handle(signal.SIGTERM, None)
    interrupt.handle(signal.SIGINT, None)
    assert (term.received, term.exit_code(), interrupt.exit_code()) == ("SIGTERM", 143, 130)
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C does not wait for the step to end
        interrupt.handle(signal.SIGINT, None)
