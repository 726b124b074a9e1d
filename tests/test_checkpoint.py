"""Checkpoints: atomic writes, integrity checks, skipping broken files, pruning."""
import os

import pytest
import torch

from spark_sparse.io import checkpoint as ckpt
from spark_sparse.spark import MODEL_CONFIG_KEYS


CONFIG = dict.fromkeys(MODEL_CONFIG_KEYS, 0)


def payload(step, value=1.0, run_id="a" * 32):
    return {"format": ckpt.FORMAT, "version": ckpt.VERSION, "arch": "resnet18", "encoder_kind": "sparse",
            "model_config": dict(CONFIG), "model": {"w": torch.full((64, 64), value)}, "optimizer": {}, "schedule": {},
            "rng": {}, "epoch": 0, "step": step, "args": {}, "run_id": run_id}


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    out = str(tmp_path)
    path = ckpt.checkpoint_path(out, 4)
    ckpt.save_atomic(payload(4, 1.0), path)
    before = open(path, "rb").read()

    real_save = torch.save

    def dying_save(obj, f):  # writes part of the file, then the process "dies"
        real_save(obj, f)
        os.truncate(f, 100)
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_atomic(payload(4, 2.0), path)
    monkeypatch.undo()
    assert open(path, "rb").read() == before, "the existing checkpoint must not be touched"
    assert os.listdir(ckpt.checkpoint_dir(out)) == ["ckpt-00000004.pt"], "no temporary file may be left"
    assert float(ckpt.load(path)["model"]["w"][0, 0]) == 1.0


def test_resume_skips_truncated_and_corrupt_files_with_a_warning(tmp_path):
    out = str(tmp_path)
    for step in (2, 4, 6, 8):
        ckpt.save_atomic(payload(step, float(step)), ckpt.checkpoint_path(out, step))
    # step 8: truncated (a copy cut short); step 6: one flipped bit inside the tensor data
    p8, p6 = ckpt.checkpoint_path(out, 8), ckpt.checkpoint_path(out, 6)
    data = open(p8, "rb").read()
    open(p8, "wb").write(data[: len(data) // 2])
    data = bytearray(open(p6, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(p6, "wb").write(bytes(data))
    # a stray temporary file from a killed save
    open(os.path.join(ckpt.checkpoint_dir(out), "ckpt-00000010.pt.abc.tmp"), "wb").write(b"partial")

    with pytest.warns(UserWarning) as record:
        path, loaded = ckpt.latest_valid(out)
    assert path == ckpt.checkpoint_path(out, 4) and loaded["step"] == 4
    messages = " ".join(str(w.message) for w in record)
    assert "ckpt-00000008.pt" in messages and "ckpt-00000006.pt" in messages and "corrupt" in messages
    assert ckpt.remove_stale_temporaries(out) and not any(f.endswith(".tmp")
                                                         for f in os.listdir(ckpt.checkpoint_dir(out)))


def test_foreign_or_newer_files_are_refused(tmp_path):
    path = str(tmp_path / "x.pt")
    torch.save({"hello": 1}, path)
    with pytest.raises(ckpt.CheckpointError, match="not a spark_sparse"):
        ckpt.load(path)
    torch.save(dict(payload(1), version=ckpt.VERSION + 1), path)
    with pytest.raises(ckpt.CheckpointError, match="version"):
        ckpt.load(path)


def test_a_model_config_that_cannot_rebuild_the_model_is_refused_by_name(tmp_path):
    path = str(tmp_path / "x.pt")
    config = {k: v for k, v in CONFIG.items() if k != "strides"}
    torch.save(dict(payload(1), model_config=config), path)
    with pytest.raises(ckpt.CheckpointError, match=r"model_config lacks \['strides'\]"):
        ckpt.load(path)


def test_prune_keeps_the_newest(tmp_path):
    out = str(tmp_path)
    for step in (1, 2, 3, 10, 11):
        ckpt.save_atomic(payload(step), ckpt.checkpoint_path(out, step))
    removed = ckpt.prune(out, 3, "a" * 32)
    assert [os.path.basename(p) for p in removed] == ["ckpt-00000001.pt", "ckpt-00000002.pt"]
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [3, 10, 11]


def test_model_config_records_every_key_a_checkpoint_must_hold():
    from spark_sparse.spark import build_spark, model_config
    config = model_config(build_spark("resnet18", decoder_width=32), "resnet18", backend="auto", drop_path=0.0,
                          input_size=64)
    assert tuple(config) == MODEL_CONFIG_KEYS
