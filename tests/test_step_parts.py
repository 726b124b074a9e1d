"""The parts of the whole step beside the encoder: the step timer's phases, decoder checkpointing and
the NCHW head (both the same function in fp64), bf16 autocast on the CPU, and the trainer's choice
of threads and precision from what the machine gives it."""
import json
import os

import pytest
import torch

import spark_sparse as ss
from tests.equivalence import build_model, rel_max
from tests.pretrain_utils import TINY, make_image_folder, parse
from spark_sparse.spark import SparK
from spark_sparse.step_timer import PHASES, StepTimer
from spark_sparse.cpus import cgroup_cpu_limit
from spark_sparse.precision import cpu_has_native_bf16
from spark_sparse.train.resources import plan_threads


def _model(dtype=torch.float64, arch="resnet18", drop_path=0.0, **kwargs):
    torch.manual_seed(0)
    encoder = ss.sparsify(build_model(arch, drop_path_rate=drop_path))
    return SparK(encoder, decoder_width=32, **kwargs).to(dtype).train()


def _inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 64, 96, generator=g, dtype=dtype), ss.random_visible(2, (2, 3), 0.5, generator=g)


def _step(model, images, visible, probe=None):
    loss = model(images, visible, probe=probe)
    if probe is not None:
        probe.backward(loss.backward)
    else:
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return loss.detach(), grads, buffers


@pytest.mark.parametrize("variant", [{"decoder_checkpointing": True}, {"encoder_checkpointing": True},
                                     {"decoder_checkpointing": True, "encoder_checkpointing": True},
                                     {"head_format": "contiguous"}])
def test_checkpointed_parts_and_nchw_head_compute_the_same_step(variant):
    """fp64: loss, every gradient and every running statistic as the default model's (BatchNorm
    statistics and batch counters are not updated twice by the recomputation)."""
    images, visible = _inputs()
    base, other = _model(), _model(**variant)
    other.load_state_dict(base.state_dict())
    (l0, g0, b0), (l1, g1, b1) = _step(base, images, visible), _step(other, images, visible)
    assert rel_max(l0, l1) <= 1e-12
    assert set(g0) == set(g1) and all(rel_max(g0[n], g1[n]) <= 1e-10 for n in g0)
    assert set(b0) == set(b1) and all(rel_max(b0[n], b1[n]) <= 1e-12 for n in b0 if b0[n].is_floating_point())
    counters = [n for n in b0 if n.endswith("num_batches_tracked")]
    assert counters and all(torch.equal(b0[n], b1[n]) for n in counters)
    assert other.decoder.checkpointing == variant.get("decoder_checkpointing", False)
    assert other.encoder.checkpointing == variant.get("encoder_checkpointing", False)
    if "head_format" in variant:
        assert all(m.weight.is_contiguous() for m in other.decoder.modules() if isinstance(m, torch.nn.Conv2d))


def test_encoder_checkpointing_redraws_the_same_drop_path_masks():
    """A ConvNeXt with drop path: the recomputed blocks draw the same per-sample masks (torch's
    checkpoint restores the RNG state), so the fp64 step is the one without recomputation."""
    images, visible = _inputs()
    base = _model(arch="convnext_atto", drop_path=0.5)
    other = _model(arch="convnext_atto", drop_path=0.5, encoder_checkpointing=True, decoder_checkpointing=True)
    other.load_state_dict(base.state_dict())
    torch.manual_seed(5)
    l0, g0, _ = _step(base, images, visible)
    torch.manual_seed(5)
    l1, g1, _ = _step(other, images, visible)
    torch.manual_seed(6)
    l2, _, _ = _step(base, images, visible)
    assert rel_max(l0, l2) > 1e-6  # drop path does draw: another seed gives another loss
    assert rel_max(l0, l1) <= 1e-12
    assert all(rel_max(g0[n], g1[n]) <= 1e-10 for n in g0)


def test_encoder_checkpointing_needs_the_sparse_encoder():
    with pytest.raises(ValueError, match="encoder_checkpointing needs the sparse encoder"):
        SparK(ss.MaskedDenseEncoder(build_model("resnet18")), decoder_width=32, encoder_checkpointing=True)


# the decoder's two deepest blocks are not recomputed and keep theirs (about a quarter in this small head)
@pytest.mark.parametrize("part, phase, fraction", [("decoder", "decoder_fwd", 0.3),
                                                   ("encoder", "encoder_fwd", 1 / 10)])
def test_checkpointing_keeps_fewer_activations(part, phase, fraction):
    images, visible = _inputs(torch.float32)
    saved = {}
    for ckpt in (False, True):
        model = _model(torch.float32, **{f"{part}_checkpointing": ckpt})
        timer = StepTimer(count_memory=True, exclude=list(model.parameters()))
        _step(model, images, visible, timer)
        saved[ckpt] = timer.saved_bytes.get(phase, 0)
    assert saved[True] < saved[False] * fraction


def test_step_timer_splits_forward_and_backward():
    images, visible = _inputs(torch.float32)
    model = _model(torch.float32)
    timer = StepTimer(count_memory=True, exclude=list(model.parameters()))
    start = timer.now()
    _step(model, images, visible, timer)
    wall = (timer.now() - start) * 1e3
    assert set(timer.ms) == set(PHASES) - {"data", "optimizer"} and all(v >= 0 for v in timer.ms.values())
    assert sum(timer.ms.values()) <= wall
    assert timer.saved_bytes["encoder_fwd"] > 0 and timer.saved_bytes["decoder_fwd"] > 0
    quiet = StepTimer(enabled=False)
    _step(model, images, visible, quiet)
    quiet.add("data", 1.0)
    assert quiet.ms == {} and quiet.saved_bytes == {}


def test_bf16_autocast_runs_the_sparse_step_on_the_cpu_with_an_fp32_loss():
    images, visible = _inputs(torch.float32)
    model = _model(torch.float32)
    fp32 = model(images, visible).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(images, visible)
    assert loss.dtype == torch.float32 and torch.isfinite(loss.detach())
    assert abs(loss.item() - fp32.item()) <= 0.05 * abs(fp32.item())
    loss.backward()
    assert all(p.grad is None or (p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all())
               for p in model.parameters())


def test_checkpointing_recomputes_under_the_same_bf16_autocast():
    """The recomputation runs in the autocast state of the first forward (torch's checkpoint records
    it), so a bf16 step with both parts recomputed gives the plain bf16 step's loss and gradients."""
    images, visible = _inputs(torch.float32)
    base = _model(torch.float32)
    other = _model(torch.float32, encoder_checkpointing=True, decoder_checkpointing=True)
    other.load_state_dict(base.state_dict())
    results = []
    for model in (base, other):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(images, visible)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1)
    assert all(torch.allclose(g0[n], g1[n], rtol=1e-5, atol=1e-7) for n in g0)


def test_threads_fit_the_cores_the_process_was_given(tmp_path, monkeypatch):
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert cgroup_cpu_limit(str(quota)) == 1.5
    assert cgroup_cpu_limit(str(tmp_path / "none")) is None
    (tmp_path / "max").write_text("max 100000\n")
    assert cgroup_cpu_limit(str(tmp_path / "max")) is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    plan = plan_threads("cpu", 1, cgroup_path=str(tmp_path / "none"))
    assert (plan.compute_threads, plan.workers, plan.cores) == (4, 1, 4) and "affinity 4" in plan.describe()
    plan = plan_threads("cpu", 1, cgroup_path=str(quota))  # the quota, not the affinity, limits
    assert (plan.compute_threads, plan.workers, plan.cores) == (1, 1, 1) and "quota 1.5" in plan.why
    assert plan_threads("cpu", 2, cgroup_path=str(tmp_path / "none")).compute_threads == 2  # per process
    assert plan_threads("cpu", 1, cgroup_path=str(tmp_path / "none"), default_threads=2).compute_threads == 2
    assert plan_threads("cpu", 1, workers=0, cgroup_path=str(tmp_path / "none")).workers == 0
    assert plan_threads("cpu", 1, threads_env="3", cgroup_path=str(tmp_path / "none")).compute_threads == 3
    cuda = plan_threads("cuda", 1, cgroup_path=str(tmp_path / "none"))
    assert cuda.workers == 3 and cuda.compute_threads == 1


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    with_bf16 = tmp_path / "a"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    without = tmp_path / "b"
    without.write_text("processor\t: 0\nflags\t\t: fpu avx2\n")
    assert cpu_has_native_bf16(str(with_bf16)) and not cpu_has_native_bf16(str(without))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))


def test_the_cpu_is_named_with_its_family_and_vector_units(tmp_path):
    """Clouds name every AMD EPYC generation "AMD EPYC": measured routing's cache key must still tell
    a Zen 4 from a Zen 5 (they time the 1×1 candidates differently), so the name carries the family,
    the model and the widest vector units, read from the first processor only."""
    import platform

    from spark_sparse.cpus import cpu_model

    def named(text):
        path = tmp_path / f"cpuinfo{len(list(tmp_path.iterdir()))}"  # a new path each time: cpu_model is cached
        path.write_text(text)
        return cpu_model(str(path))

    block = ("processor\t: {n}\nmodel name\t: AMD EPYC\ncpu family\t: {family}\nmodel\t\t: {model}\n"
             "flags\t\t: {flags}\n\n")
    zen4 = named(block.format(n=0, family=25, model=17, flags="fpu avx2 avx512f avx512_bf16")
                 + block.format(n=1, family=99, model=9, flags="fpu"))
    zen5 = named(block.format(n=0, family=26, model=2, flags="fpu avx2 avx512f avx512_bf16"))
    zen3 = named(block.format(n=0, family=25, model=1, flags="fpu avx2"))
    assert zen4 == "AMD EPYC (family 25 model 17, avx512_bf16)" and zen5 != zen4
    assert zen3 == "AMD EPYC (family 25 model 1, avx2)"
    assert cpu_model(str(tmp_path / "missing")) == (platform.processor() or platform.machine() or "unknown")


def test_a_run_logs_its_threads_and_step_phases_and_trains_in_bf16(tmp_path, capsys):
    from spark_sparse.train.trainer import Trainer
    data = make_image_folder(str(tmp_path / "data"), count=8)
    out = str(tmp_path / "run")
    trainer = Trainer(parse(["--data", data, *TINY, "--steps", "2", "--amp", "bf16", "--out", out]))
    assert trainer.amp == "bf16" and trainer.fit() == 0
    text = capsys.readouterr().out
    assert "threads: " in text and "OpenMP wait: " in text and "amp bf16" in text and "step ms: data" in text
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert len(records) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    phases = {k[len("step_ms/"):] for k in records[0] if k.startswith("step_ms/")}
    assert phases == set(PHASES)
