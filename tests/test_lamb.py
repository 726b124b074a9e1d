"""LAMB with its Adam part fused computes timm's LAMB: in fp64 to 1e-13 over several steps (two
parameter groups as the trainer builds them, weight decay and learning rate changing per step, a zero
weight, a parameter without a gradient, channels-last weights), in fp32 within rounding; its state
loads into timm's and back; settings it does not implement run timm's own code."""
import pytest
import torch
from timm.optim import Lamb as TimmLamb

from spark_sparse.train import lamb as lamb_module
from spark_sparse.train.lamb import Lamb


def _params(dtype):
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 6, 3, 3), (6, 6, 4, 4), (16, 5), (7,), (7,)]
    params = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    params[1] = params[1].contiguous(memory_format=torch.channels_last)  # as the dense head keeps its convs
    params[2].zero_()  # a zero weight: the trust ratio is 1
    return [torch.nn.Parameter(p) for p in params]


def _groups(params):
    return [{"params": params[:3], "wd_scale": 1.0}, {"params": params[3:], "wd_scale": 0.0}]


def _run(opt_class, params, steps, start=1, **kwargs):
    opt = opt_class(_groups(params), lr=0.0, betas=(0.9, 0.95), weight_decay=0.0, max_grad_norm=None, **kwargs)
    return _steps(opt, params, steps, start)


def _steps(opt, params, steps, start=1, grad_layout=None):
    for k in range(start, start + steps):
        for group in opt.param_groups:  # as the trainer's schedule sets them every step
            group["lr"] = 1e-2 / k
            group["weight_decay"] = 0.05 * k * group["wd_scale"]
        g = torch.Generator().manual_seed(100 + k)
        for i, p in enumerate(params):
            if i == 4 and k % 2:
                p.grad = None  # a parameter without a gradient at this step: left alone
            else:
                grad = torch.randn(p.shape, generator=g, dtype=p.dtype) * 1e-2
                # laid out as its weight, as autograd does, unless the test says otherwise
                p.grad = (grad.contiguous(memory_format=grad_layout) if grad_layout and p.dim() == 4
                          else torch.empty_like(p).copy_(grad))
        opt.step()
    return opt


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _compare(ours, theirs, params_ours, params_theirs, tol):
    for a, b in zip(params_ours, params_theirs):
        assert _rel(a.detach(), b.detach()) <= tol
    for a, b in zip(params_ours, params_theirs):
        sa, sb = ours.state[a], theirs.state[b]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert _rel(sa[key], sb[key]) <= tol
    for ga, gb in zip(ours.param_groups, theirs.param_groups):
        assert float(ga["step"]) == float(gb["step"])


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the fused Adam calls, so a test fails if the fused path was silently not taken."""
    calls = []
    original = torch._fused_adam_

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)
    monkeypatch.setattr(torch, "_fused_adam_", counting)
    return calls


def test_same_as_timm_in_fp64(fused_calls):
    ours_params, theirs_params = _params(torch.float64), _params(torch.float64)
    ours = _run(Lamb, ours_params, 5)
    theirs = _run(TimmLamb, theirs_params, 5)
    assert len(fused_calls) == 10  # two groups, five steps
    _compare(ours, theirs, ours_params, theirs_params, 1e-13)


def test_fp32_within_rounding_of_timm():
    ours_params, theirs_params = _params(torch.float32), _params(torch.float32)
    ours = _run(Lamb, ours_params, 5)
    theirs = _run(TimmLamb, theirs_params, 5)
    _compare(ours, theirs, ours_params, theirs_params, 1e-5)


@pytest.mark.parametrize("first, then", [(TimmLamb, Lamb), (Lamb, TimmLamb)], ids=["timm-to-fused", "fused-to-timm"])
def test_state_goes_both_ways(first, then):
    """A checkpoint written with either optimizer resumes with the other: the same state."""
    params = _params(torch.float64)
    opt = _run(first, params, 3)
    saved = opt.state_dict()
    resumed = then(_groups(params), lr=0.0, betas=(0.9, 0.95), weight_decay=0.0, max_grad_norm=None)
    resumed.load_state_dict(saved)
    _steps(resumed, params, 2, start=4)
    reference_params = _params(torch.float64)
    reference = _run(TimmLamb, reference_params, 5)
    _compare(resumed, reference, params, reference_params, 1e-13)


@pytest.mark.parametrize("setting", [{"caution": True}, {"trust_clip": True}, {"max_grad_norm": 1.0},
                                     {"always_adapt": True}])
def test_other_settings_run_timms_code(setting, fused_calls):
    ours_params, theirs_params = _params(torch.float64), _params(torch.float64)
    kwargs = dict(lr=0.0, betas=(0.9, 0.95), weight_decay=0.0, max_grad_norm=None)
    kwargs.update(setting)
    ours = _steps(Lamb(_groups(ours_params), **kwargs), ours_params, 3)
    theirs = _steps(TimmLamb(_groups(theirs_params), **kwargs), theirs_params, 3)
    assert not fused_calls
    for a, b in zip(ours_params, theirs_params):
        assert torch.equal(a, b)
    assert ours.state_dict()["param_groups"] == theirs.state_dict()["param_groups"]


def test_gradients_laid_out_unlike_their_weights_run_timms_code(fused_calls):
    ours_params, theirs_params = _params(torch.float64), _params(torch.float64)
    kwargs = dict(lr=0.0, betas=(0.9, 0.95), weight_decay=0.0, max_grad_norm=None)
    _steps(Lamb(_groups(ours_params), **kwargs), ours_params, 2, grad_layout=torch.channels_last)
    _steps(TimmLamb(_groups(theirs_params), **kwargs), theirs_params, 2, grad_layout=torch.channels_last)
    assert not fused_calls
    for a, b in zip(ours_params, theirs_params):
        assert torch.equal(a, b)


def test_torch_without_cpu_fused_adam_runs_timms_code(monkeypatch, fused_calls):
    monkeypatch.setattr(lamb_module, "_CPU_FUSED", False)
    ours_params, theirs_params = _params(torch.float64), _params(torch.float64)
    _run(Lamb, ours_params, 2)
    _run(TimmLamb, theirs_params, 2)
    assert not fused_calls
    for a, b in zip(ours_params, theirs_params):
        assert torch.equal(a, b)


def test_trainer_builds_it():
    from spark_sparse.train.schedule import build_optimizer
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert isinstance(build_optimizer(model, "lamb", lr=1e-3, betas=(0.9, 0.95)), Lamb)
