"""SparK's recipe: lr / weight-decay schedules, no-decay groups, optimiser, per-model defaults."""

import pytest
import torch


import spark_sparse as ss
from tests.equivalence import build_model
from spark_sparse.spark import SparK
from spark_sparse.recipe import default_drop_path
from spark_sparse.train.config import peak_lr
from spark_sparse.train.schedule import Schedule, build_optimizer, lamb_betas, no_decay, param_groups
from tests.pretrain_utils import parse


def test_lr_schedule_warms_up_linearly_then_cosine():
    s = Schedule(peak_lr=1e-3, warmup_steps=10, total_steps=101)
    lrs = [s.lr(t) for t in range(101)]
    assert lrs[0] == pytest.approx(0.005e-3)
    assert lrs[5] == pytest.approx(1e-3 * (0.005 + 0.995 * 0.5))          # linear in the warm-up
    assert lrs[10] == pytest.approx(1e-3)                                  # the peak right after it
    assert lrs[100] == pytest.approx(0.001e-3)                             # 0.1 % of the peak at the end
    assert lrs[55] == pytest.approx(1e-3 * (0.001 + 0.999 * 0.5))          # the cosine's midpoint
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))
    assert all(a > b for a, b in zip(lrs[10:100], lrs[11:101]))


def test_weight_decay_cosine_from_004_to_02():
    s = Schedule(peak_lr=1e-3, warmup_steps=10, total_steps=101, wd=0.04, wd_end=0.2)
    wds = [s.weight_decay(t) for t in range(101)]
    assert wds[0] == pytest.approx(0.04) and wds[100] == pytest.approx(0.2)
    assert wds[50] == pytest.approx(0.12)
    assert all(a < b for a, b in zip(wds, wds[1:]))


def test_peak_lr_scales_with_the_global_batch(tmp_path):
    args = parse(["--data", str(tmp_path)])
    assert peak_lr(args, 4096) == pytest.approx(2e-4 * 16)
    assert peak_lr(args, 256) == pytest.approx(2e-4)
    assert peak_lr(parse(["--lr", "0.01"]), 4096) == 0.01
    assert peak_lr(parse([]), 16) == pytest.approx(3.2e-3)  # the embedded demo run


def test_no_decay_groups_and_schedule_application():
    model = SparK(ss.sparsify(build_model("resnet18")), decoder_width=64)
    groups = {g["group"]: g for g in param_groups(model)}
    decay, nodecay = set(groups["decay"]["names"]), set(groups["no_decay"]["names"])
    names = dict(model.named_parameters())
    assert decay | nodecay == set(names) and not decay & nodecay
    for name in nodecay:   # 1-D tensors, biases and mask tokens only
        assert names[name].ndim <= 1 or name.endswith(".bias") or "mask_token" in name
    assert {f"mask_tokens.{i}" for i in range(4)} <= nodecay
    assert "densify_projs.1.bias" in nodecay and "encoder.bn1.weight" in nodecay
    assert all(names[n].ndim > 1 for n in decay)
    assert "encoder.conv1.weight" in decay and "decoder.dec.0.up_sample.weight" in decay
    assert no_decay("stages.0.blocks.0.gamma", torch.zeros(3, 3))  # layer scales by name, whatever their shape

    opt = build_optimizer(model, "lamb", lr=0.0, betas=lamb_betas("resnet50"))
    from timm.optim import Lamb
    assert isinstance(opt, Lamb) and opt.defaults["max_grad_norm"] is None  # clipping is the trainer's
    assert opt.defaults["betas"] == (0.9, 0.95) and lamb_betas("convnext_base") == (0.9, 0.999)
    s = Schedule(peak_lr=1e-3, warmup_steps=2, total_steps=10)
    lr, wd = s.apply(opt, 5)
    for g in opt.param_groups:
        assert g["lr"] == lr
        assert g["weight_decay"] == (0.0 if g["group"] == "no_decay" else wd) and (wd > 0.04)


def test_drop_path_defaults_per_model():
    expected = {"resnet18": 0.0, "resnet50": 0.05, "resnet101": 0.08, "resnet152": 0.1, "resnet200": 0.15,
                "convnext_small": 0.2, "convnext_base": 0.3, "convnext_large": 0.4}
    assert {a: default_drop_path(a) for a in expected} == expected


def test_bad_arguments_are_refused_clearly():
    from spark_sparse.train.config import check_args
    with pytest.raises(ValueError, match="multiple of 32"):
        check_args(parse(["--input-size", "100"]))
    with pytest.raises(ValueError, match="mask-ratio"):
        check_args(parse(["--mask-ratio", "1.0"]))


@pytest.mark.parametrize("scale", [0.01, 100.0])
def test_clipping_gives_torchs_gradients_and_norm_and_skips_the_no_op_multiply(scale, monkeypatch):
    from spark_sparse.train.update import clip_gradients
    g = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.zeros(n)) for n in (7, 300, 5000)]
    theirs = [torch.nn.Parameter(torch.zeros(n)) for n in (7, 300, 5000)]
    for a, b in zip(ours, theirs):
        a.grad = torch.randn(a.shape, generator=g) * scale
        b.grad = a.grad.clone()
    multiplied, real_clip = [], torch.nn.utils.clip_grads_with_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grads_with_norm_",
                        lambda *a, **k: multiplied.append(1) or real_clip(*a, **k))
    norm = clip_gradients(ours, 5.0)
    expected = float(torch.nn.utils.clip_grad_norm_(theirs, 5.0))
    assert norm == expected and (norm > 5.0) == (scale > 1)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, theirs))
    assert multiplied == ([1] if scale > 1 else [])
    assert clip_gradients(ours, 0.0) == pytest.approx(min(norm, 5.0), rel=1e-5)  # 0 = no clipping: norm only


@pytest.mark.parametrize("epochs, per_epoch, total, expected", [
    (0.5, 18, 36, (9, "")),                # fits: as asked
    (0.5, 18, 8, (1, "warming up over 1 step(s) instead (10 % of the run, at least one)")),  # 9 ≥ 8: cut
    (2.0, 18, 30, (3, "warming up over 3 step(s) instead (10 % of the run, at least one)")),
    (1.0, 18, 1, (0, "no warm-up")),       # a one-step run
])
def test_a_warm_up_longer_than_the_run_is_cut_and_said_truly(epochs, per_epoch, total, expected):
    from spark_sparse.train.schedule import warmup_steps
    steps, note = warmup_steps(epochs, per_epoch, total)
    assert steps == expected[0] and note.endswith(expected[1])
