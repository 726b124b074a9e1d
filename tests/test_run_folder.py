"""A run only prunes, resumes and overwrites what it wrote itself: checkpoints carry a run id, the
folder names its run, and an --out holding another run is refused unless --force (then nothing of
the other run is deleted or overwritten)."""
import json
import os
import shutil

import pytest
import torch

from tests.pretrain_utils import TINY, make_image_folder, parse
from spark_sparse.io import checkpoint as ckpt
from spark_sparse.train.run_folder import PREVIOUS, folder_run
from spark_sparse.train.trainer import EXIT_BAD_INPUT, Trainer, pretrain


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(str(tmp_path_factory.mktemp("images")), count=16)


def train(argv):
    torch.set_num_threads(1)
    assert Trainer(parse(argv)).fit() == 0


def steps_and_runs(out):
    return [(step, os.path.basename(path), ckpt.run_of(path)) for step, path in ckpt.list_checkpoints(out)]


def records(out, name="metrics.jsonl"):
    with open(os.path.join(out, name)) as f:
        return [json.loads(line)["step"] for line in f]


def test_foreign_and_corrupt_checkpoints_are_never_pruned_resumed_or_overwritten(data, tmp_path, capsys):
    base = ["--data", data, *TINY, "--ckpt-every", "1", "--keep-ckpts", "1"]
    other, mine = str(tmp_path / "other"), str(tmp_path / "mine")
    train(base + ["--steps", "1", "--out", other])
    foreign = ckpt.list_checkpoints(other)[-1][1]
    train(base + ["--steps", "2", "--out", mine])
    run = folder_run(mine)
    assert run and [(s, r) for s, _, r in steps_and_runs(mine)] == [(2, run)]

    # another run's valid checkpoints (one at the very name the run will save next) and a corrupt file
    folder = ckpt.checkpoint_dir(mine)
    shutil.copy(foreign, os.path.join(folder, "ckpt-00000003.pt"))
    shutil.copy(foreign, os.path.join(folder, "ckpt-00000100.pt"))
    with open(os.path.join(folder, "ckpt-00000200.pt"), "wb") as f:
        f.write(b"PK\x03\x04 a corrupt zip")
    untouched = {n: open(os.path.join(folder, n), "rb").read()
                 for n in ("ckpt-00000003.pt", "ckpt-00000100.pt", "ckpt-00000200.pt")}

    capsys.readouterr()
    train(base + ["--steps", "4", "--out", mine])  # --resume auto: its own step 2, not step 100
    said = capsys.readouterr().out
    assert "WARNING: skipping checkpoint" in said and "written by another run" in said and "ckpt-00000200.pt" in said
    found = steps_and_runs(mine)
    own = [(s, name) for s, name, r in found if r == run]
    assert own == [(4, "ckpt-00000004.pt")], f"keeps its newest own checkpoint only: {found}"
    for name, content in untouched.items():
        assert open(os.path.join(folder, name), "rb").read() == content, f"{name} was touched"
    assert ckpt.load(ckpt.checkpoint_path(mine, 4))["run_id"] == run, "a resumed run keeps its run id"
    assert records(mine) == [1, 2, 3, 4]


def test_the_step_taken_by_another_runs_file_saves_beside_it(data, tmp_path, capsys):
    base = ["--data", data, *TINY, "--ckpt-every", "1", "--keep-ckpts", "0"]
    other, mine = str(tmp_path / "other"), str(tmp_path / "mine")
    train(base + ["--steps", "1", "--out", other])
    train(base + ["--steps", "1", "--out", mine])
    shutil.copy(ckpt.list_checkpoints(other)[-1][1], ckpt.checkpoint_path(mine, 2))
    train(base + ["--steps", "2", "--out", mine])
    assert "written by another run" in capsys.readouterr().out
    run = folder_run(mine)
    names = {name: r for _, name, r in steps_and_runs(mine)}
    assert names[f"ckpt-00000002.{run[:8]}.pt"] == run and names["ckpt-00000002.pt"] == folder_run(other)


def test_resume_file_into_another_runs_folder_is_refused_unless_forced(data, tmp_path, capsys):
    base = ["--data", data, *TINY, "--ckpt-every", "1", "--keep-ckpts", "2"]
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    train(base + ["--steps", "3", "--out", first])
    train(base + ["--steps", "1", "--out", second])
    first_run, second_run = folder_run(first), folder_run(second)
    before = steps_and_runs(first)
    metrics_before = open(os.path.join(first, "metrics.jsonl")).read()

    resume = ckpt.checkpoint_path(second, 1)
    assert pretrain(parse(base + ["--steps", "4", "--out", first, "--resume", resume])) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "holds checkpoints of another run" in err and "--force" in err
    assert steps_and_runs(first) == before and folder_run(first) == first_run, "a refused run writes nothing"

    train(base + ["--steps", "4", "--out", first, "--resume", resume, "--force"])
    assert folder_run(first) == second_run, "the resumed run continues the file's run"
    after = steps_and_runs(first)
    assert [x for x in after if x[2] == first_run] == before, "the other run's checkpoints are all kept"
    assert [s for s, _, r in after if r == second_run] == [3, 4]
    kept = os.path.join(first, PREVIOUS, first_run, "metrics.jsonl")
    assert open(kept).read() == metrics_before, "the other run's metrics are moved aside, not overwritten"
    assert records(first) == [2, 3, 4]
    assert ckpt.latest_valid(first, run_id=folder_run(first))[1]["step"] == 4


def test_resume_of_an_older_checkpoint_of_the_same_run_is_refused(data, tmp_path, capsys):
    out = str(tmp_path / "run")
    base = ["--data", data, *TINY, "--ckpt-every", "1", "--keep-ckpts", "0", "--out", out]
    train(base + ["--steps", "3"])
    older = ckpt.checkpoint_path(out, 1)
    assert pretrain(parse(base + ["--steps", "4", "--resume", older])) == EXIT_BAD_INPUT
    assert "up to step 3, newer than" in capsys.readouterr().err


def test_resume_none_into_a_folder_with_checkpoints_is_refused(data, tmp_path, capsys):
    out = str(tmp_path / "run")
    base = ["--data", data, *TINY, "--out", out]
    train(base + ["--steps", "1"])
    assert pretrain(parse(base + ["--steps", "1", "--resume", "none"])) == EXIT_BAD_INPUT
    assert "already holds checkpoints" in capsys.readouterr().err


def test_a_run_whose_checkpoints_are_all_unreadable_is_not_silently_restarted(data, tmp_path, capsys):
    out = str(tmp_path / "run")
    base = ["--data", data, *TINY, "--ckpt-every", "1", "--keep-ckpts", "0", "--out", out]
    train(base + ["--steps", "2"])
    run, metrics = folder_run(out), open(os.path.join(out, "metrics.jsonl")).read()
    for _, path in ckpt.list_checkpoints(out):
        os.truncate(path, 1000)
    mine = os.path.join(ckpt.checkpoint_dir(out), "notes.tmp")  # the user's file: not a stale temporary
    open(mine, "w").write("mine")
    assert pretrain(parse(base + ["--steps", "3"])) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "none of the 2 checkpoint(s)" in err and "cannot continue" in err and "--force" in err
    assert open(os.path.join(out, "metrics.jsonl")).read() == metrics and folder_run(out) == run, "nothing touched"
    assert open(mine).read() == "mine"

    train(base + ["--steps", "1", "--force"])  # forced: a new run from step 0, the old logs kept aside
    said = capsys.readouterr().out
    assert f"no readable checkpoint of run {run}" in said and "starting run" in said
    assert folder_run(out) != run and records(out) == [1]
    assert open(os.path.join(out, PREVIOUS, run, "metrics.jsonl")).read() == metrics


def test_a_run_that_logged_steps_but_left_no_checkpoint_moves_its_logs_aside(data, tmp_path, capsys):
    out = str(tmp_path / "run")
    base = ["--data", data, *TINY, "--out", out]
    train(base + ["--steps", "2"])
    run, metrics = folder_run(out), open(os.path.join(out, "metrics.jsonl")).read()
    shutil.rmtree(ckpt.checkpoint_dir(out))
    capsys.readouterr()
    train(base + ["--steps", "1"])
    assert f"no readable checkpoint of run {run}" in capsys.readouterr().out
    assert open(os.path.join(out, PREVIOUS, run, "metrics.jsonl")).read() == metrics and records(out) == [1]


def test_resuming_on_another_batch_size_or_data_set_is_refused_unless_forced(tmp_path, capsys):
    data = make_image_folder(str(tmp_path / "data"), count=16)
    out = str(tmp_path / "run")
    base = ["--data", data, *TINY, "--out", out]
    train(base + ["--epochs", "1"])
    capsys.readouterr()
    bigger = [a if a != "4" else "8" for a in base]  # --batch-size 4 → 8
    assert pretrain(parse(bigger + ["--epochs", "2"])) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "--batch-size 4 → 8" in err and "--force" in err
    make_image_folder(str(tmp_path / "data" / "more"), count=4, seed=1)
    assert pretrain(parse(base + ["--epochs", "2"])) == EXIT_BAD_INPUT
    assert "another data set (16 images then, 20 now" in capsys.readouterr().err
    train(base + ["--epochs", "2", "--force"])
    assert "going on (--force)" in capsys.readouterr().out


def test_a_second_run_on_a_folder_in_use_is_refused(data, tmp_path, capsys):
    from spark_sparse.train.run_folder import lock_folder
    out = str(tmp_path / "run")
    held = lock_folder(out)  # as a run still writing there holds it, in the middle of a save
    os.makedirs(ckpt.checkpoint_dir(out))
    being_written = os.path.join(ckpt.checkpoint_dir(out), "ckpt-00000001.pt.abcd1234.tmp")
    open(being_written, "wb").close()
    try:
        assert pretrain(parse(["--data", data, *TINY, "--steps", "1", "--out", out])) == EXIT_BAD_INPUT
        assert f"another spark-sparse pretrain (process {os.getpid()}) is writing to {out}" in capsys.readouterr().err
        assert os.listdir(ckpt.checkpoint_dir(out)) == [os.path.basename(being_written)] and folder_run(out) is None
    finally:
        held.release()
    os.unlink(being_written)
    train(["--data", data, *TINY, "--steps", "1", "--out", out])  # released: the folder is free again
    train(["--data", data, *TINY, "--steps", "2", "--out", out])  # and the lock of a finished run is gone


@pytest.mark.parametrize("change, message", [(("--decoder-width", "32", "64"), "--decoder-width 32"),
                                             (("--arch", "resnet10t", "resnet18"), "the checkpoint is a resnet10t"),
                                             (("--batch-size", "4", "8"), "--batch-size 4 → 8")])
def test_a_resume_refused_for_its_checkpoint_leaves_the_new_out_untouched(data, tmp_path, capsys, change, message):
    """A checkpoint that does not fit the run is refused before the folder is claimed: the --out it
    named gets no run.json (which would make the corrected command a run of another folder's)."""
    first = str(tmp_path / "first")
    train(["--data", data, *TINY, "--steps", "1", "--out", first])
    path = ckpt.list_checkpoints(first)[-1][1]
    option, old, new = change
    i = TINY.index(option)
    assert TINY[i + 1] == old
    wrong = TINY[:i + 1] + [new] + TINY[i + 2:]
    fresh = str(tmp_path / "fresh")
    capsys.readouterr()
    assert pretrain(parse(["--data", data, *wrong, "--steps", "2", "--resume", path, "--out", fresh])) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert not os.path.exists(fresh) and folder_run(fresh) is None
    train(["--data", data, *TINY, "--steps", "2", "--resume", path, "--out", fresh])
    assert [step for step, _ in ckpt.list_checkpoints(fresh)] == [2]
