"""A failed run exits within seconds with a non-zero status (not 143, which means "stopped by SIGTERM
after saving"), data workers included, and leaves no process behind: one real CLI run per place an
error can come from (the step, the data pipeline, a checkpoint write, the visualisation), each with
data workers and a wall-clock limit."""
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.pretrain_utils import REPO, TINY, env, make_image_folder

LIMIT = 120  # seconds; a run that fails this way takes ~15 s on a busy 2-core machine


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(str(tmp_path_factory.mktemp("images")), count=16)


def run_cli(argv, patch="", preexec=None):
    """Run ``spark-sparse pretrain`` in a new session (so every process it starts can be found after),
    with ``patch`` (Python code) executed first; return (status, output, processes left behind)."""
    code = textwrap.dedent(patch) + textwrap.dedent(f"""
        import sys
        from spark_sparse.cli import main
        sys.exit(main({["pretrain", *argv]!r}))
    """)
    def start():
        if preexec:
            preexec()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, preexec_fn=start)
    try:
        out, _ = proc.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the run did not exit within {LIMIT} s (hung):\n{out[-3000:]}")
    time.sleep(0.5)  # an orphan would still be running now
    left = session_members(proc.pid)
    for pid in left:  # leave nothing behind, whatever the verdict
        os.kill(pid, signal.SIGKILL)
    return proc.returncode, out, left


def session_members(sid):
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getsid(int(name)) == sid:
                    found.append(int(name))
            except (ProcessLookupError, PermissionError):
                pass
    return found


def check_failed(rc, out, left, message):
    assert rc not in (0, 143, None) and rc > 0, f"status {rc}:\n{out[-3000:]}"
    assert message in out, out[-3000:]
    assert not left, f"processes left behind: {left}"


def test_an_error_in_the_step_exits(data, tmp_path):
    patch = """
        from spark_sparse.spark import SparK
        forward, calls = SparK.forward, []
        def failing(self, *a, **k):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("injected failure in step 2")
            return forward(self, *a, **k)
        SparK.forward = failing
    """
    rc, out, left = run_cli(["--data", data, *TINY, "--workers", "1", "--steps", "3", "--out", str(tmp_path / "r")],
                            patch)
    check_failed(rc, out, left, "injected failure in step 2")


def test_an_error_in_the_data_pipeline_exits(tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    for i in range(20):  # more unreadable files in a row than a run accepts
        (root / f"img{i:02d}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    rc, out, left = run_cli(["--data", str(root), *TINY, "--workers", "1", "--steps", "3",
                             "--out", str(tmp_path / "r")])
    check_failed(rc, out, left, "unreadable images in a row")
    assert "Traceback" not in out and "spark-sparse pretrain: error: 16 unreadable images in a row" in out, out


def test_a_killed_data_worker_ends_the_run_with_one_line(data, tmp_path):
    patch = """
        import os, signal
        from spark_sparse.train import data
        get, calls = data.PretrainDataset.__getitem__, []
        def dying(self, key):
            calls.append(1)
            if len(calls) == 6:  # in the worker, during the second batch: as the kernel's OOM killer would
                os.kill(os.getpid(), signal.SIGKILL)
            return get(self, key)
        data.PretrainDataset.__getitem__ = dying
    """
    rc, out, left = run_cli(["--data", data, *TINY, "--workers", "1", "--steps", "3", "--ckpt-every", "1",
                             "--out", str(tmp_path / "r")], patch)
    check_failed(rc, out, left, "a data-loading process died")
    assert "Traceback" not in out and "rerun the same command to continue" in out, out


def test_a_failed_checkpoint_write_exits(data, tmp_path):
    def small_files():  # as a full disk would: writes past 4 MB fail (a checkpoint here is ~60 MB)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))
    rc, out, left = run_cli(["--data", data, *TINY, "--workers", "1", "--steps", "2", "--out", str(tmp_path / "r")],
                            preexec=small_files)
    check_failed(rc, out, left, "could not be written")
    assert "Traceback" not in out and "The newest checkpoint is none" in out, out
    folder = tmp_path / "r" / "checkpoints"
    assert not folder.exists() or not os.listdir(folder), "no checkpoint and no temporary file is left"


def test_an_error_in_the_visualisation_exits(data, tmp_path):
    patch = """
        from spark_sparse.train.monitor import Monitor
        def failing(self, step, grid):
            raise OSError("injected failure writing a reconstruction grid")
        Monitor.images = failing
    """
    rc, out, left = run_cli(["--data", data, *TINY, "--workers", "1", "--steps", "3", "--out", str(tmp_path / "r")],
                            patch)
    check_failed(rc, out, left, "injected failure writing a reconstruction grid")


def test_a_stuck_data_worker_ends_the_run_after_the_data_timeout(data, tmp_path):
    patch = """
        import time
        from spark_sparse.train import data
        get, calls = data.PretrainDataset.__getitem__, []
        def stuck(self, key):
            calls.append(1)
            if len(calls) == 6:  # in the worker, during the second batch: a read that never returns
                time.sleep(3600)
            return get(self, key)
        data.PretrainDataset.__getitem__ = stuck
    """
    rc, out, left = run_cli(["--data", data, *TINY, "--workers", "1", "--steps", "3", "--data-timeout", "5",
                             "--out", str(tmp_path / "r")], patch)
    check_failed(rc, out, left, "no batch came from the data loading within --data-timeout 5 s")
    assert "Traceback" not in out, out


def test_a_second_ctrl_c_says_that_no_checkpoint_was_saved(data, tmp_path, monkeypatch, capsys):
    from tests.pretrain_utils import parse
    from spark_sparse.train import trainer

    def interrupted(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(trainer.Trainer, "fit", interrupted)
    assert trainer.pretrain(parse(["--data", data, *TINY, "--steps", "1", "--out", str(tmp_path / "r")])) == 130
    assert "interrupted before a step boundary: no checkpoint saved; the newest is none" in capsys.readouterr().err
