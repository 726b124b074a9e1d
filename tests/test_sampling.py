"""Measured routing on the CPU samples the training step's own calls (spark_sparse/routing/sampling.py):
the sampled steps compute the reference's numbers, a probe times forward and backward, the samples
decide as the rules say, and failures or thrown-away forwards cannot break or grow anything."""
import pytest
import torch

import spark_sparse as ss
from spark_sparse import routing
from spark_sparse.features import SparseFeatures
from spark_sparse.geometry import Geometry
from spark_sparse.layers.conv import SparseConv2d
from spark_sparse.routing import router, sampling
from spark_sparse.routing.measure import CHEAP_REPEATS, REPEATS
from spark_sparse.spec import ConvSpec

from tests.equivalence import cached_model, compare_fp64, run

CONV3 = ConvSpec(16, 16, (3, 3), (1, 1), (1, 1), (1, 1))


def inputs(seed, batch=2, size=64, ratio=0.5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g), ss.random_visible(batch, size // 32, ratio, generator=g)


def sparse_input(dtype=torch.float32, seed=0):
    """A 16-channel input at stride 4 (patch blocks of 8×8 sites) of two images, half the patches visible."""
    g = torch.Generator().manual_seed(seed)
    visible = ss.random_visible(2, 2, 0.5, generator=g)
    dense = torch.randn(2, 16, 16, 16, generator=g, dtype=dtype)
    return SparseFeatures.from_dense(dense, Geometry(visible, 32), stride=4)


def test_sampled_steps_compute_the_reference_in_fp64(fresh_cache, monkeypatch):
    """While every layer shape is being measured its calls run different candidates; each step still
    equals the masked-dense reference (features, every gradient, BatchNorm statistics) in fp64."""
    encoder = ss.sparsify(cached_model("resnet18")).double().set_routing("measured")
    reference = ss.MaskedDenseEncoder(cached_model("resnet18")).double()
    ran = set()

    def recording(probe, *args):
        ran.add(probe.implementation)
        return sampling.execute(probe, *args)

    monkeypatch.setattr(router, "execute", recording)
    for step in range(4):
        images, visible = inputs(step)
        out_grads = [torch.randn(o.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
                     for o in reference(images.double(), visible)]
        reference = ss.MaskedDenseEncoder(cached_model("resnet18")).double()
        reference.load_state_dict(encoder.state_dict())  # the same running statistics as the encoder's
        encoder.zero_grad(set_to_none=True)
        compare_fp64(run(encoder, images.double(), visible, out_grads),
                     run(reference, images.double(), visible, out_grads))
    assert {"torch", "tiles", "maxpool-tiles", "maxpool-table"} <= ran  # the steps did run several candidates


def test_a_probe_times_forward_and_backward_and_changes_nothing():
    layer = SparseConv2d(CONV3, bias=True)
    torch.nn.init.normal_(layer.weight)
    torch.nn.init.normal_(layer.bias)
    x = sparse_input()
    plain_in = x.features.clone().requires_grad_()
    plain = routing.RUN["tiles"](x.replace(plain_in), *layer.operands(x))
    plain.square().sum().backward()
    want = (plain.detach(), plain_in.grad, layer.weight.grad.clone(), layer.bias.grad.clone())
    layer.zero_grad()

    sampler = sampling.Sampler(["tiles", "torch"], prior="tiles")
    probe = sampler.next_call()
    assert (probe.implementation, probe.warm_up) == ("tiles", True)  # the prior warms up first
    feats = x.features.clone().requires_grad_()
    out = sampling.execute(probe, routing.RUN, x.replace(feats), layer.operands(x))
    assert probe.forward_s > 0 and probe.needs_backward and not probe.done
    out.square().sum().backward()
    assert probe.done and probe.backward_s > 0 and probe.seconds == probe.forward_s + probe.backward_s
    got = (out.detach(), feats.grad, layer.weight.grad, layer.bias.grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def fake_call(sampler, seconds):
    """One call as the sampler issues it, its forward + backward taking ``seconds[implementation]``."""
    probe = sampler.next_call()
    probe.forward_s = seconds[probe.implementation]  # a forward alone: done at once
    return probe


def settle(sampler, seconds, limit=20):
    issued = []
    for _ in range(limit):
        decision = sampler.decision()
        if decision is not None:
            return decision, issued
        probe = fake_call(sampler, seconds)
        issued.append((probe.implementation, probe.warm_up))
    raise AssertionError(f"no decision after {limit} calls: {issued}")


def test_close_candidates_get_repeated_samples_and_the_fastest_wins():
    sampler = sampling.Sampler(["torch", "tiles"], prior="torch")
    decision, issued = settle(sampler, {"torch": 0.050, "tiles": 0.045})
    assert issued[:2] == [("torch", True), ("tiles", True)]
    assert decision["implementation"] == "tiles"
    assert sum(not warm for _, warm in issued) == 2 * REPEATS
    assert decision["ms"] == {"torch": 50.0, "tiles": 45.0}


def test_a_clearly_slower_candidate_is_sampled_once_and_a_far_slower_one_not_at_all():
    sampler = sampling.Sampler(["torch", "tiles"], prior="tiles")
    decision, issued = settle(sampler, {"torch": 0.060, "tiles": 0.040})  # 1.5×: past CLOSE
    assert decision["implementation"] == "tiles"
    assert issued.count(("torch", False)) == 1 and issued.count(("tiles", False)) == REPEATS
    sampler = sampling.Sampler(["torch", "tiles"], prior="tiles")
    decision, issued = settle(sampler, {"torch": 0.120, "tiles": 0.040})  # 3×: its warm-up tells
    assert decision["implementation"] == "tiles" and ("torch", False) not in issued


def test_cheap_layers_sample_every_candidate_more():
    sampler = sampling.Sampler(["matmul", "pointwise-conv"], prior="matmul")
    decision, issued = settle(sampler, {"matmul": 0.002, "pointwise-conv": 0.006})
    assert issued.count(("pointwise-conv", False)) == CHEAP_REPEATS and decision["implementation"] == "matmul"


def test_calls_waiting_for_their_backward_run_the_leader():
    """Several calls of one shape in one forward: once each candidate has its warm-up out, the others
    run untimed (no probe) by the prior, nothing being measured yet."""
    sampler = sampling.Sampler(["torch", "tiles"], prior="tiles")
    probes = [sampler.next_call() for _ in range(6)]
    assert [p.implementation for p in probes[:2]] == ["tiles", "torch"] and probes[2:] == [None] * 4
    assert sampler.leading() == "tiles"


def test_a_call_whose_backward_never_ran_does_not_stall_the_measurement():
    sampler = sampling.Sampler(["torch", "tiles"], prior="tiles")
    thrown_away = sampler.next_call()  # its forward ran with gradients; no backward ever will
    assert thrown_away.implementation == "tiles" and not thrown_away.done
    decision, issued = settle(sampler, {"torch": 0.050, "tiles": 0.040})
    assert decision["implementation"] == "tiles" and thrown_away not in sampler.pending


def test_a_layer_called_once_without_backward_still_settles(fresh_cache):
    layer = SparseConv2d(CONV3, bias=False)
    layer.routing = "measured"
    layer(sparse_input())  # e.g. a forward that raised further on, or a model called outside no_grad
    for step in range(20):
        layer(sparse_input(seed=step)).features.sum().backward()
        if routing.tuning_stats()["tuned"]:
            break
    assert routing.tuning_stats() == dict(routing.tuning_stats(), tuned=1, pending=0)


def test_a_sampled_output_may_be_modified_in_place(fresh_cache):
    """The next layer of a conv may be an in-place ReLU: timing the call must not make its output a view."""
    layer = SparseConv2d(CONV3, bias=False)
    torch.nn.init.normal_(layer.weight)
    layer.routing = "measured"
    for step in range(3):
        out = layer(sparse_input(seed=step)).features
        torch.relu_(out)
        out.sum().backward()
    assert layer.weight.grad is not None and routing.tuning_stats()["pending"] == 1


def test_a_failing_candidate_drops_out_and_the_call_runs_another(monkeypatch):
    def broken(*args):
        raise RuntimeError("no kernel for this shape")

    monkeypatch.setitem(routing.RUN, "tiles", broken)
    layer = SparseConv2d(CONV3, bias=False)
    torch.nn.init.normal_(layer.weight)
    x = sparse_input()
    sampler = sampling.Sampler(["tiles", "torch"], prior="tiles")
    probe = sampler.next_call()
    out = sampling.execute(probe, routing.RUN, x, layer.operands(x))
    torch.testing.assert_close(out, routing.RUN["torch"](x, *layer.operands(x)))
    assert "no kernel" in sampler.errors["tiles"]
    decision, issued = settle(sampler, {"torch": 0.05})
    assert decision["implementation"] == "torch" and "no kernel" in decision["errors"]["tiles"]


class _BrokenBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features):
        return features.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("no backward kernel for this shape")


def break_backward(monkeypatch, implementation, like):
    """``implementation`` computes what ``like`` computes, but its backward raises."""
    real = routing.RUN[like]
    monkeypatch.setitem(routing.RUN, implementation, lambda x, *ops: _BrokenBackward.apply(real(x, *ops)))


def test_a_candidate_whose_backward_fails_drops_out_and_the_step_goes_on(monkeypatch):
    """Its forward ran; its backward raises. The call's gradients then come from another candidate, its
    forward recomputed: the same numbers as that candidate's own call (fp64), and no error reaches the
    step. Before, the step failed, and every run on an empty cache failed the same way."""
    break_backward(monkeypatch, "tiles", like="tiles")
    layer = SparseConv2d(CONV3, bias=True).double()
    torch.nn.init.normal_(layer.weight)
    x = sparse_input(torch.float64)
    grads = {}
    for name, sampler in (("torch", None), ("sampled", sampling.Sampler(["tiles", "torch"], prior="tiles"))):
        layer.zero_grad()
        feats = x.features.clone().requires_grad_()
        if sampler is None:
            out = routing.RUN["torch"](x.replace(feats), *layer.operands(x))
        else:
            probe = sampler.next_call()
            assert probe.implementation == "tiles"
            out = sampling.execute(probe, routing.RUN, x.replace(feats), layer.operands(x))
        out.square().sum().backward()
        grads[name] = (out.detach(), feats.grad, layer.weight.grad.clone(), layer.bias.grad.clone())
    for a, b in zip(grads["sampled"], grads["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert "no backward kernel" in sampler.errors["tiles"] and sampler.alive() == ["torch"]
    assert not probe.done  # a failed call is no sample
    decision, _ = settle(sampler, {"torch": 0.05})
    assert decision["implementation"] == "torch" and "no backward kernel" in decision["errors"]["tiles"]


@pytest.mark.parametrize("input_grad", [True, False])
def test_an_input_modified_in_place_after_a_sampled_call_is_refused_never_a_wrong_gradient(monkeypatch, input_grad):
    """As autograd refuses it for a layer that saved its input: never a candidate dropped for it, nor a
    gradient recomputed from the modified input (also when only the weight needs a gradient)."""
    break_backward(monkeypatch, "tiles", like="torch")
    layer = SparseConv2d(CONV3, bias=False)
    x = sparse_input()
    sampler = sampling.Sampler(["tiles", "torch"], prior="tiles")
    feats = x.features.clone().requires_grad_(input_grad)
    inner = feats * 1.0
    out = sampling.execute(sampler.next_call(), routing.RUN, x.replace(inner), layer.operands(x))
    inner.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
    assert not sampler.errors


def test_a_double_backward_through_a_sampled_call_reaches_the_inputs():
    """A gradient penalty differentiates the gradients again: through a sampled call the second-order
    terms reach the weight and the input as through the plain call (fp64)."""
    layer = SparseConv2d(CONV3, bias=True).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(1)))
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=torch.Generator().manual_seed(2)))
    x = sparse_input(torch.float64)
    found = {}
    for name in ("plain", "sampled"):
        feats = x.features.clone().requires_grad_()
        if name == "plain":
            out = routing.RUN["tiles"](x.replace(feats), *layer.operands(x))
        else:
            probe = sampling.Sampler(["tiles", "torch"], prior="tiles").next_call()
            out = sampling.execute(probe, routing.RUN, x.replace(feats), layer.operands(x))
        g_in, g_w = torch.autograd.grad(out.square().sum(), (feats, layer.weight), create_graph=True)
        found[name] = torch.autograd.grad(g_in.square().sum() + g_w.square().sum(), (feats, layer.weight, layer.bias))
    for a, b in zip(found["sampled"], found["plain"]):
        # relative to the largest entry: second-order terms sum many large products (a wiring fault
        # gives None or errors of order one)
        error = ((a - b).abs().max() / b.abs().max()).item()
        assert error <= 1e-10, error


def test_a_sampled_call_keeps_its_inputs_no_longer_than_its_backward():
    """Its saved inputs are freed by the backward, as any layer's are, even while the graph's output
    lives on (e.g. a loss kept for logging)."""
    import gc
    import weakref
    layer = SparseConv2d(CONV3, bias=False)
    x = sparse_input()
    inner = x.features.clone().requires_grad_() * 1.0
    kept = weakref.ref(inner)
    out = sampling.execute(sampling.Sampler(["tiles", "torch"], prior="tiles").next_call(), routing.RUN,
                           x.replace(inner), layer.operands(x))
    del inner
    gc.collect()
    assert kept() is not None  # saved for the backward
    out.sum().backward()
    gc.collect()
    assert kept() is None and out.grad_fn is not None


def test_no_candidate_keeps_its_own_output_for_its_backward(fresh_cache, monkeypatch):
    """A sampled call's output shares its memory with the candidate's graph, so the next layer may
    modify it in place (an in-place ReLU) only if no candidate saved its output for its backward: were
    one to, its backward would fail and it would be dropped for nothing. Every candidate of ResNet's
    and ConvNeXt's layers is checked by modifying every sampled output in place."""
    apply, seen, failures = sampling._Sampled.apply, set(), []

    def modified_in_place(call, *tensors):
        seen.add(call.probe.implementation)
        return apply(call, *tensors).mul_(1.0)

    def failed(sampler, implementation, error):
        failures.append((implementation, error))
        return None

    monkeypatch.setattr(sampling._Sampled, "apply", modified_in_place)
    monkeypatch.setattr(sampling.Sampler, "failed", failed)  # any failure would raise
    for arch in ("resnet18", "convnext_atto"):
        encoder = ss.sparsify(cached_model(arch)).set_routing("measured")
        for step in range(4):
            images, visible = inputs(step)
            sum(o.features.sum() for o in encoder.forward_sparse(images, visible)).backward()
    assert not failures
    assert {"torch", "gather-conv", "tiles", "matmul", "pointwise-conv", "maxpool-tiles", "maxpool-table"} <= seen
    assert len({impl for impl in seen if impl.startswith("depthwise-")}) >= 2, seen  # ConvNeXt's


def test_forwards_without_backward_neither_decide_nor_pile_up(fresh_cache):
    layer = SparseConv2d(CONV3, bias=False)
    layer.routing = "measured"
    x = sparse_input()
    for _ in range(3 * sampling.MAX_PENDING):
        layer(x)  # with gradients on, never backpropagated
    (sampler,) = router._TUNER.samplers.values()
    assert len(sampler.pending) <= sampling.MAX_PENDING
    assert routing.tuning_stats()["tuned"] == 0 and routing.tuning_stats()["pending"] == 1
    assert not fresh_cache.exists()


def test_a_layer_settles_within_a_few_steps_and_a_new_process_reads_it(fresh_cache):
    layer = SparseConv2d(CONV3, bias=False)
    layer.routing = "measured"
    steps = 0
    while routing.tuning_stats()["tuned"] == 0:
        assert steps < 20, "measured routing never decided"
        x = sparse_input(seed=steps)
        layer(x).features.sum().backward()
        steps += 1
    assert fresh_cache.exists()
    routing.forget_measurements()
    layer(sparse_input()).features.sum().backward()
    assert routing.tuning_stats() == dict(routing.tuning_stats(), tuned=0, cached=1, pending=0)


# ---- activation checkpointing: the recomputation runs what the forward ran ------------------------

def test_encoder_checkpointing_under_measured_routing_on_an_empty_cache(fresh_cache):
    """Checkpointed blocks run twice; neither run may tune (a sample would time the recomputation, a
    trial's backward would run inside the checkpointed forward: both crashed training before), and
    the recomputation runs the forward's routes. The steps equal the plain encoder's in fp64."""
    plain = ss.sparsify(cached_model("resnet18")).double().set_routing("fixed")
    checkpointed = ss.sparsify(cached_model("resnet18")).double().set_routing("measured").set_checkpointing(True)
    for step in range(3):
        images, visible = inputs(step)
        out_grads = [torch.randn(o.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
                     for o in plain(images.double(), visible)]
        plain.load_state_dict(checkpointed.state_dict())  # that call moved the running statistics
        for encoder in (plain, checkpointed):
            encoder.zero_grad(set_to_none=True)
        compare_fp64(run(checkpointed, images.double(), visible, out_grads),
                     run(plain, images.double(), visible, out_grads))
    assert routing.tuning_stats()["tuned"] == routing.tuning_stats()["pending"] == 0
    assert not fresh_cache.exists()


def test_a_recomputation_replays_the_recorded_routes_in_order():
    log = routing.RouteLog()
    a, b = torch.nn.Identity(), torch.nn.Identity()  # stand-ins for two routed layers
    first, second = routing.Route("tiles", "measured"), routing.Route("matmul", "rule")
    with log.recording():
        assert routing.replay.checkpointed() and routing.replay.replayed_route(a) is None
        routing.replay.record(a, first)
        routing.replay.record(b, second)
    assert not routing.replay.checkpointed()
    for _ in range(2):  # each recomputation starts from the first
        with log.replaying():
            assert [routing.replay.replayed_route(a), routing.replay.replayed_route(b)] == [first, second]
            with pytest.raises(RuntimeError, match="more routed layers than its forward"):
                routing.replay.replayed_route(a)
    with log.replaying():  # a layer asking out of turn would get another layer's route: refused
        with pytest.raises(RuntimeError, match="another order than its forward: call 1 was Identity"):
            routing.replay.replayed_route(b)


def test_the_route_log_belongs_to_the_thread_that_records_it():
    """DataParallel runs replicas on threads: one thread's checkpointed forward must not record into,
    or replay from, another thread's log."""
    import threading
    log, seen = routing.RouteLog(), {}
    layer = torch.nn.Identity()
    with log.recording():
        def other_thread():
            seen["checkpointed"] = routing.replay.checkpointed()
            routing.replay.record(layer, routing.Route("torch", "other thread"))
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert seen == {"checkpointed": False} and log.routes == []


def test_a_replayed_layer_runs_the_recorded_implementation_whatever_the_router_says(fresh_cache):
    layer = SparseConv2d(CONV3, bias=False)
    torch.nn.init.normal_(layer.weight)
    x = sparse_input()
    log = routing.RouteLog()
    log.routes.append((layer, routing.Route("torch", "recorded")))
    calls = []
    real = routing.RUN["torch"]

    def no_router(*args, **kwargs):
        raise AssertionError("a replayed layer asked the router")

    with log.replaying(), pytest.MonkeyPatch.context() as patch:
        patch.setattr("spark_sparse.layers.base.route", no_router)
        patch.setitem(routing.RUN, "torch", lambda *a: calls.append(1) or real(*a))
        layer.routing = "measured"
        layer(x)
    assert calls  # it ran the recorded 'torch'
