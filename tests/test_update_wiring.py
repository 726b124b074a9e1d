"""The trainer hands its options to the update: --clip reaches the clipping (the gradients the
optimiser steps on have global norm --clip when they were larger; --clip 0 leaves them as they are),
and the lr / weight decay the optimiser uses and metrics.jsonl records are train/schedule.py's
Schedule at each step (linear warm-up, then cosine; decay only on the 'decay' group)."""
import json
import os

import pytest
import torch

from spark_sparse import recipe
from spark_sparse.train import update
from spark_sparse.train.schedule import Schedule
from spark_sparse.train.trainer import Trainer
from tests.pretrain_utils import TINY, make_image_folder, parse

STEPS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 16 images, batch 4: 4 steps per epoch, --warmup-epochs 0.5 → 2 warm-up steps within the 3 run
    return make_image_folder(str(tmp_path_factory.mktemp("data")), count=16)


def run(tmp_path, data, monkeypatch, clip):
    """Run STEPS steps; per step: the clip value clip_gradients got, the global gradient norm before
    clipping, and at optimizer.step the global norm, each group's lr and weight decay."""
    seen = {"clip": [], "before": [], "at_step": [], "groups": []}
    real_clip = update.clip_gradients

    def spy_clip(params, clip_value):
        params = list(params)
        seen["clip"].append(clip_value)
        seen["before"].append(float(torch.norm(torch.stack([p.grad.detach().double().norm() for p in params]))))
        return real_clip(params, clip_value)

    monkeypatch.setattr(update, "clip_gradients", spy_clip)
    argv = ["--data", data, *TINY, "--steps", str(STEPS), "--out", str(tmp_path / f"run{clip}")]
    if clip is not None:
        argv += ["--clip", str(clip)]
    trainer = Trainer(parse(argv))
    real_step = trainer.optimizer.step

    def spy_step(*args, **kwargs):
        grads = [p.grad.detach().double() for g in trainer.optimizer.param_groups for p in g["params"]
                 if p.grad is not None]
        seen["at_step"].append(float(torch.norm(torch.stack([g.norm() for g in grads]))))
        seen["groups"].append({g["group"]: (g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups})
        return real_step(*args, **kwargs)

    trainer.optimizer.step = spy_step
    assert trainer.fit() == 0
    with open(os.path.join(trainer.out, "metrics.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert len(seen["clip"]) == len(seen["at_step"]) == STEPS
    return trainer, seen, records


def test_a_small_clip_leaves_the_gradient_norm_at_the_clip(tmp_path, data, monkeypatch):
    clip = 1e-3
    _, seen, records = run(tmp_path, data, monkeypatch, clip)
    assert seen["clip"] == [clip] * STEPS
    for before, at_step, r in zip(seen["before"], seen["at_step"], records):
        assert before > 10 * clip, "the test needs gradients larger than the clip"
        assert at_step == pytest.approx(clip, rel=1e-4), (before, at_step)
        assert r["grad_norm"] == pytest.approx(before, rel=1e-5), "grad_norm is recorded before clipping"


def test_clip_zero_leaves_the_gradients_unclipped(tmp_path, data, monkeypatch):
    _, seen, _ = run(tmp_path, data, monkeypatch, 0)
    assert seen["clip"] == [0.0] * STEPS
    for before, at_step in zip(seen["before"], seen["at_step"]):
        assert at_step == pytest.approx(before, rel=1e-12) and at_step > 1e-6


def test_default_clip_and_schedule_in_metrics(tmp_path, data, monkeypatch):
    trainer, seen, records = run(tmp_path, data, monkeypatch, None)
    assert seen["clip"] == [recipe.CLIP] * STEPS == [5.0] * STEPS  # SparK clips to 5
    # SparK's linear scaling of the base lr (TINY: --base-lr 0.05, batch 4); 2 warm-up steps of 3
    assert trainer.steps_per_epoch == 4
    schedule = Schedule(0.05 * 4 / 256, 2, STEPS, recipe.WEIGHT_DECAY, recipe.WEIGHT_DECAY_END)
    assert (recipe.WEIGHT_DECAY, recipe.WEIGHT_DECAY_END) == (0.04, 0.2)
    lrs, wds = [schedule.lr(s) for s in range(STEPS)], [schedule.weight_decay(s) for s in range(STEPS)]
    assert lrs[0] < lrs[1] and wds[0] < wds[1] < wds[2], "a schedule that moves over these steps"
    for step, r in enumerate(records):
        assert r["lr"] == pytest.approx(lrs[step], rel=1e-12), step
        assert r["wd"] == pytest.approx(wds[step], rel=1e-12), step
        groups = seen["groups"][step]
        assert set(groups) == {"decay", "no_decay"}
        assert groups["decay"] == pytest.approx((lrs[step], wds[step]), rel=1e-12)
        assert groups["no_decay"] == pytest.approx((lrs[step], 0.0), rel=1e-12)
