"""Whole pre-training runs on a tiny folder: exact resume after SIGKILL, 2 processes (gloo) equal to
1, NaN stop, unreadable images counted, SIGTERM saves. ResNet-10-T at 64 px, a few steps each."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.pretrain_utils import (REPO, TINY, cli, env, final_checkpoint, finish, make_image_folder,
                            max_weight_difference, parse)
from spark_sparse.io import checkpoint as ckpt
from spark_sparse.train.trainer import EXIT_NON_FINITE, Trainer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(str(tmp_path_factory.mktemp("images")), count=16)


def losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def train(argv):
    """One run in this process, single-threaded like the subprocess runs (so the arithmetic is identical)."""
    torch.set_num_threads(1)  # tests/conftest.py restores the thread count afterwards
    assert Trainer(parse(argv)).fit() == 0


def test_resume_after_sigkill_is_exact(data, tmp_path):
    """SIGKILL a run part-way; resuming from what it left ends with the uninterrupted run's weights."""
    args = ["--data", data, *TINY, "--epochs", "2", "--ckpt-every", "2", "--drop-path", "0.1"]  # 8 steps
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    victim = cli(args + ["--out", killed, "--workers", "1"])  # resumed below with none: order must not care
    deadline = time.time() + 240
    target = ckpt.checkpoint_path(killed, 4)
    while not os.path.exists(target):
        assert victim.poll() is None, f"the run ended before it could be killed:\n{victim.communicate()[0]}"
        assert time.time() < deadline, "no checkpoint at step 4 in time"
        time.sleep(0.02)
    assert victim.poll() is None, "the run must still be running when killed"
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    done = max(s for s, _ in ckpt.list_checkpoints(killed))
    assert 4 <= done < 8, f"killed part-way: newest checkpoint at step {done}"

    train(args + ["--out", killed])  # --resume auto is the default
    train(args + ["--out", straight, "--keep-ckpts", "0"])
    a, b = final_checkpoint(straight), final_checkpoint(killed)
    assert a["step"] == b["step"] == 8 and b["epoch"] == 2
    assert max_weight_difference(a["model"], b["model"]) <= 1e-6
    la, lb = losses(straight), losses(killed)
    assert sorted(lb) == list(range(1, 9)), "the resumed log has each step once"
    assert all(abs(la[s] - lb[s]) <= 1e-6 for s in la), "same losses step by step"
    assert max_weight_difference(a["model"], final_checkpoint(straight, 2)["model"]) > 1e-4, "weights moved"


def test_checkpointing_trains_the_same_run_and_may_be_switched_on_when_resuming(data, tmp_path, capsys):
    """Encoder and decoder checkpointing recompute the same numbers: the same losses and weights as a
    run without it, and a run may resume with it switched on (to fit in less memory) without a warning."""
    base = ["--data", data, *TINY, "--drop-path", "0.1"]
    args = base + ["--epochs", "1"]  # 4 steps
    plain, recomputed = str(tmp_path / "plain"), str(tmp_path / "recomputed")
    train(args + ["--out", plain])
    train(args + ["--out", recomputed, "--encoder-checkpointing", "--decoder-checkpointing"])
    assert "encoder checkpointing, decoder checkpointing" in capsys.readouterr().out
    assert max_weight_difference(final_checkpoint(plain)["model"], final_checkpoint(recomputed)["model"]) <= 1e-6
    la, lb = losses(plain), losses(recomputed)
    assert sorted(la) == sorted(lb) == [1, 2, 3, 4] and all(abs(la[s] - lb[s]) <= 1e-6 for s in la)
    train(base + ["--epochs", "2", "--out", plain, "--encoder-checkpointing"])
    warning = [line for line in capsys.readouterr().out.splitlines() if "changed arguments" in line]
    assert warning == ["WARNING: resuming with changed arguments (checkpoint → now): epochs 1.0 → 2.0"]
    assert final_checkpoint(plain)["step"] == 8


def test_two_processes_with_gloo_match_one(data, tmp_path):
    """torchrun, 2 CPU processes (sparse SyncBatchNorm, DDP) == 1 process with the same global batch."""
    args = ["--data", data, *TINY, "--epochs", "1", "--ckpt-every", "0"]  # 4 steps of a global batch of 4
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    ranks = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              "-m", "spark_sparse.cli", "pretrain", *args, "--out", two],
                             cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    train(args + ["--out", one])
    log = finish(ranks)
    assert "2 process(es)" in log and "2 per process" in log
    a, b = final_checkpoint(one), final_checkpoint(two)
    assert b["world_size"] == 2 and len(b["rng"]["torch"]) == 2 and a["step"] == b["step"] == 4
    # BatchNorm running statistics included: they come from the synchronised (global) statistics
    scale = max(float(v.double().abs().max()) for v in a["model"].values() if v.is_floating_point())
    assert max_weight_difference(a["model"], b["model"]) <= 1e-5 * scale
    la, lb = losses(one), losses(two)
    assert all(abs(la[s] - lb[s]) <= 1e-5 for s in la)
    assert set(a["model"]) == set(b["model"]), "synced BatchNorm keeps the state_dict keys"


class NaNAtStep(Trainer):
    """The loss turns NaN at one step (as a diverging run's would)."""
    nan_step = 5

    def compute_loss(self, images, visible, with_reconstruction):
        out = super().compute_loss(images, visible, with_reconstruction)
        if self.step + 1 == self.nan_step:
            return (out[0] * float("nan"), out[1]) if with_reconstruction else out * float("nan")
        return out


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, capsys):
    out = str(tmp_path / "nan")
    trainer = NaNAtStep(parse(["--data", data, *TINY, "--epochs", "2", "--ckpt-every", "2", "--out", out]))
    assert trainer.fit() == EXIT_NON_FINITE
    text = capsys.readouterr().out
    assert "the loss is nan at step 5" in text and "last good checkpoint is" in text
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2, 4], "nothing saved after the NaN"
    good = ckpt.load(ckpt.checkpoint_path(out, 4))
    assert good["step"] == 4
    # the NaN step changed no weight (its forward did update BatchNorm running statistics, which is
    # why nothing after it is ever saved): the parameters are exactly the last good checkpoint's
    params = {k: v.detach().cpu() for k, v in trainer.model.named_parameters()}
    assert max_weight_difference({k: good["model"][k] for k in params}, params) == 0
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_unreadable_images_are_counted_in_a_run(tmp_path, capsys):
    root = make_image_folder(str(tmp_path / "data"), count=10)
    open(os.path.join(root, "class0", "broken.jpg"), "wb").write(b"\xff\xd8 not really a jpeg")
    data = open(os.path.join(root, "class1", "img001.png"), "rb").read()
    open(os.path.join(root, "class1", "cut.png"), "wb").write(data[:200])
    out = str(tmp_path / "run")
    assert Trainer(parse(["--data", root, *TINY, "--epochs", "1", "--out", out])).fit() == 0  # 12 files: 3 steps
    text = capsys.readouterr().out
    assert "skipped unreadable image class0/broken.jpg" in text and "skipped unreadable image class1/cut.png" in text
    assert "2 unreadable image files skipped (2 reads)" in text
    metrics = final_checkpoint(out)["metrics"]
    assert metrics["skipped_images"] == 2 and metrics["skipped_files"] == ["class0/broken.jpg", "class1/cut.png"]


class SignalAtStep(Trainer):
    def compute_loss(self, images, visible, with_reconstruction):
        if self.step + 1 == 2:
            self.stop.handle(signal.SIGTERM, None)  # as if SIGTERM arrived during step 2
        return super().compute_loss(images, visible, with_reconstruction)


def test_sigterm_saves_a_checkpoint_then_stops(data, tmp_path):
    out = str(tmp_path / "term")
    trainer = SignalAtStep(parse(["--data", data, *TINY, "--epochs", "2", "--ckpt-every", "0", "--out", out,
                                  "--vis-every", "1"]))
    with pytest.raises(SystemExit) as stop:
        trainer.fit()
    assert stop.value.code == 143
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2]
    assert sorted(os.listdir(os.path.join(out, "vis"))) == ["reconstruction-00000001.png",
                                                            "reconstruction-00000002.png"]
    assert os.listdir(os.path.join(out, "tensorboard"))


def test_checkpoint_weights_load_into_timm_and_rebuild_the_model(data, tmp_path):
    """The documented contract for export/import: ``encoder.*`` are timm's keys; model_config rebuilds."""
    import timm

    from spark_sparse.spark import build_spark
    out = str(tmp_path / "fmt")
    train(["--data", data, *TINY, "--steps", "1", "--out", out])
    payload = final_checkpoint(out)
    backbone = timm.create_model(payload["arch"])
    encoder = {k[len("encoder."):]: v for k, v in payload["model"].items() if k.startswith("encoder.")}
    result = backbone.load_state_dict(encoder, strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"} and not result.unexpected_keys
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in encoder.items())
    model = build_spark(**payload["model_config"])
    model.load_state_dict(payload["model"])  # strict: every key, nothing else
    assert payload["encoder_kind"] == model.encoder_kind == "sparse" and payload["version"] == ckpt.VERSION


def test_sigterm_under_the_launcher_saves_and_exits_143(data, tmp_path):
    """torchrun itself exits 1 on SIGTERM; spark_sparse.train.launch (torchrun otherwise) exits 143 once the
    processes have saved."""
    out = str(tmp_path / "launched")
    run = subprocess.Popen([sys.executable, "-m", "spark_sparse.train.launch", "--standalone", "--nproc_per_node", "2",
                            "-m", "spark_sparse.cli", "pretrain", "--data", data, *TINY, "--epochs", "50",
                            "--ckpt-every", "2", "--out", out],
                           cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not ckpt.list_checkpoints(out):
        assert run.poll() is None, run.communicate()[0]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.1)
    run.send_signal(signal.SIGTERM)
    log = run.communicate(timeout=120)[0]
    assert run.returncode == 143, log[-3000:]
    assert "stopped by SIGTERM after step" in log and "Traceback" not in log
    last = final_checkpoint(out)
    assert last["world_size"] == 2 and last["step"] < 200


def test_a_run_refused_under_the_launcher_exits_2(data, tmp_path):
    """torchrun exits 1 whatever its processes' statuses; the launcher passes on a refusal's 2."""
    out = str(tmp_path / "launched")
    ckpt_dir = ckpt.checkpoint_dir(out)
    os.makedirs(ckpt_dir)
    open(os.path.join(ckpt_dir, "ckpt-00000001.pt"), "wb").close()  # --resume none would start over them
    done = subprocess.run([sys.executable, "-m", "spark_sparse.train.launch", "--standalone", "--nproc_per_node", "2",
                           "-m", "spark_sparse.cli", "pretrain", "--data", data, *TINY, "--steps", "1",
                           "--resume", "none", "--out", out],
                          cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stdout[-3000:]
    assert "the training processes exited with status 2" in done.stdout

