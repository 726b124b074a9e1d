"""Durable writes (checkpoints, the metrics log when trimmed, run.json): the temporary file's data
reaches the disk before the rename, and the folder (which holds the new name) after it. Writes asked
for without durability (the default of write_text) do neither fsync, only the atomic rename."""
import os

import pytest
import torch

from spark_sparse import files


@pytest.fixture
def recorded(monkeypatch):
    """The fsync and replace calls of spark_sparse.files, in order, with what each was given."""
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else None
        kind = "dir" if target is not None and os.path.isdir(target) else "file"
        calls.append(("fsync", kind, target))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", os.path.abspath(src), os.path.abspath(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    return calls


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name fsync'ed descriptors")
def test_durable_write_fsyncs_the_data_before_the_rename_and_the_folder_after(tmp_path, recorded):
    path = tmp_path / "ckpt.pt"
    files.atomic_write(str(path), lambda tmp: torch.save({"x": torch.arange(3)}, tmp))
    assert torch.equal(torch.load(path)["x"], torch.arange(3))
    kinds = [(c[0], c[1]) if c[0] == "fsync" else (c[0],) for c in recorded]
    assert kinds == [("fsync", "file"), ("replace",), ("fsync", "dir")], recorded
    (_, _, synced), (_, src, dst), (_, _, folder) = recorded
    assert synced == src, "the file fsync'ed must be the temporary that is then renamed"
    assert dst == str(path) and src != dst and os.path.dirname(src) == str(tmp_path)
    assert os.path.realpath(folder) == os.path.realpath(tmp_path), "the folder holding the new name is fsync'ed"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name fsync'ed descriptors")
def test_write_text_durable_on_request(tmp_path, recorded):
    path = tmp_path / "run.json"
    files.write_text(str(path), "{}", durable=True)
    assert [(c[0], c[1]) if c[0] == "fsync" else (c[0],) for c in recorded] == \
        [("fsync", "file"), ("replace",), ("fsync", "dir")]
    assert path.read_text() == "{}\n"


def test_not_durable_writes_rename_without_fsync(tmp_path, recorded):
    path = tmp_path / "notes.txt"
    files.write_text(str(path), "hello")
    assert [c[0] for c in recorded] == ["replace"], recorded
    assert recorded[0][2] == str(path)
    assert path.read_text() == "hello\n"
    files.atomic_write(str(tmp_path / "b.bin"), lambda tmp: open(tmp, "wb").close(), durable=False)
    assert [c[0] for c in recorded] == ["replace", "replace"], recorded


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name fsync'ed descriptors")
def test_checkpoint_save_is_durable(tmp_path, recorded):
    from spark_sparse.io import checkpoint as ckpt
    path = tmp_path / "checkpoints" / "ckpt-00000001.pt"
    ckpt.save_atomic({"step": 1}, str(path))
    assert [(c[0], c[1]) if c[0] == "fsync" else (c[0],) for c in recorded] == \
        [("fsync", "file"), ("replace",), ("fsync", "dir")], recorded
    assert recorded[0][2] == recorded[1][1] and recorded[1][2] == str(path)
