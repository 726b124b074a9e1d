"""The router (spark_sparse/routing/): every candidate computes the reference's numbers, the fixed
rules and fallbacks, measured routing's tuning and cache, and the GPU candidates' dtype rules
(checked on the CPU with a CUDA device named but never touched)."""
import copy
import json
import multiprocessing
import os

import pytest
import torch

import spark_sparse as ss
from spark_sparse import routing
from spark_sparse.backends import spconv_available
from spark_sparse.spec import ConvSpec
from spark_sparse.layers.base import RoutedModule
from spark_sparse.layers.conv import SparseConv2d
from spark_sparse.layers.linear import SparseLinear
from spark_sparse.layers.pool import SparseMaxPool2d
from spark_sparse.routing import cache
from spark_sparse.routing import router as route_module
from spark_sparse.routing import Workload, candidates, route

from tests.equivalence import cached_model, compare_fp64, rel_max, run

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
CONV3 = ConvSpec(64, 64, (3, 3), (1, 1), (1, 1), (1, 1))
CONV3_STRIDED = ConvSpec(64, 128, (3, 3), (2, 2), (1, 1), (1, 1))
DW7 = ConvSpec(96, 96, (7, 7), (1, 1), (3, 3), (1, 1), 96)


def inputs(batch=2, size=64, ratio=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    visible = ss.random_visible(batch, size // 32, ratio, generator=g)
    return images, visible


def conv_routes(encoder, images, visible, kinds=None):
    """{path: Route} of every conv, Linear and max-pool on these inputs (no tuning: a no-grad pass); with
    ``kinds``, also {path: layer kind} into it."""
    found = {}

    def note(path, m, x):
        found[path] = m.route_for(x)
        if kinds is not None:
            kinds[path] = routing.layer_kind(m.layer_spec(x), x.level.r)

    hooks = [m.register_forward_pre_hook(lambda m, a, path=path: note(path, m, a[0]))
             for path, m in encoder.named_modules() if isinstance(m, RoutedModule)]
    with torch.no_grad():
        encoder(images, visible)
    for h in hooks:
        h.remove()
    return found


# ---- every candidate computes the same numbers ---------------------------------------------------

CANDIDATES = [("resnet18", "torch"), ("resnet18", "gather-conv"), ("resnet18", "tiles"), ("resnet18", "spconv"),
              ("resnet18", "matmul"), ("resnet18", "pointwise-conv"),
              ("resnet18", "maxpool-tiles"), ("resnet18", "maxpool-table"),
              ("convnext_atto", "depthwise-table"), ("convnext_atto", "depthwise-tiles"),
              ("convnext_atto", "depthwise-dense"), ("convnext_atto+linear", "matmul"),
              ("convnext_atto+linear", "pointwise-conv")]
OWN_KIND = {impl: kind for kind, impls in routing.KIND_IMPLEMENTATIONS.items() for impl in impls}


def candidate_model(arch: str):
    """``arch``'s model; 'convnext_atto+linear' is convnext_atto with the Linear MLP (conv_mlp=False)
    that convnext_tiny … large have, so that its routed Linears run the 1×1 candidates."""
    name, _, variant = arch.partition("+")
    return cached_model(name, **({"conv_mlp": False} if variant == "linear" else {}))


def forced(arch: str, implementation: str, dtype=torch.float64):
    """``arch``'s encoder with every layer of the implementation's kind forced onto it."""
    encoder = ss.sparsify(candidate_model(arch)).to(dtype)
    if implementation.startswith("depthwise-"):
        return encoder.set_depthwise(implementation)
    if OWN_KIND[implementation] == "table":
        return encoder.set_backend(implementation)
    kind = OWN_KIND[implementation]
    for m in encoder.modules():  # 1×1 convs, Linears and max-pools: no encoder setting names them
        if (isinstance(m, SparseMaxPool2d) if kind == "maxpool"
                else isinstance(m, (SparseConv2d, SparseLinear)) and routing.layer_kind(m.spec) == kind):
            m.requested = implementation
    return encoder


@pytest.mark.parametrize("arch,implementation", CANDIDATES)
def test_every_candidate_equals_the_reference_in_fp64(arch, implementation):
    """Each implementation runs every layer of its kind (checked, so the test cannot pass on a
    fallback) and the encoder then matches the masked-dense reference to FP64_TOL in fp64: routing
    changes speed only. Every other layer runs its fixed route."""
    if implementation == "spconv" and not spconv_available():
        pytest.skip("spconv is not installed")
    images, visible = inputs()
    encoder = forced(arch, implementation)
    kinds = {}
    routes = conv_routes(copy.deepcopy(encoder), images.double(), visible, kinds)  # (a pass updates BN statistics)
    mine = [p for p, r in routes.items() if r.implementation == implementation]
    assert mine and all(kinds[p] != OWN_KIND[implementation] for p in routes if p not in mine)
    assert {kinds[p] for p in mine} == {OWN_KIND[implementation]}
    reference = ss.MaskedDenseEncoder(candidate_model(arch)).double()
    out_grads = [torch.randn(o.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
                 for o in reference(images.double(), visible)]
    reference = ss.MaskedDenseEncoder(candidate_model(arch)).double()  # undo that call's running-stat update
    compare_fp64(run(encoder, images.double(), visible, out_grads),
                 run(reference, images.double(), visible, out_grads))


def test_triton_candidate_matches_the_reference():
    """The Triton depthwise kernels (Triton's interpreter here) accumulate in fp32, so no fp64 route
    names them: in fp32 they match the fp64 reference to fp32 rounding."""
    pytest.importorskip("triton")
    assert routing.unsupported("depthwise-triton", DW7, 8, CPU, torch.float64) is not None
    images, visible = inputs(batch=1, ratio=0.5)
    encoder = forced("convnext_atto", "depthwise-triton", torch.float32).eval()
    routes = conv_routes(encoder, images, visible)
    assert sum(r.implementation == "depthwise-triton" for r in routes.values()) == 12  # 2 + 2 + 6 + 2 blocks
    reference = ss.MaskedDenseEncoder(cached_model("convnext_atto")).double().eval()
    with torch.no_grad():
        got = encoder(images, visible)
        want = reference(images.double(), visible)
    for a, b in zip(got, want):
        assert rel_max(a.double(), b) < 1e-4


# ---- the fixed rules and fallbacks ---------------------------------------------------------------

def test_fixed_routes_name_an_implementation_that_runs_the_layer():
    pointwise = ConvSpec(64, 256, (1, 1), (1, 1), (0, 0), (1, 1))
    patchify = ConvSpec(96, 192, (2, 2), (2, 2), (0, 0), (1, 1))
    assert route(pointwise, 8, CPU, torch.float32, routing="fixed").implementation == "matmul"
    assert route(patchify, 2, CPU, torch.float32, routing="fixed").implementation == "patchify"
    # a patchify window that does not fit the patch block reads its neighbours through the table
    assert route(patchify, 1, CPU, torch.float32, routing="fixed").implementation in ("torch", "tiles")
    for spec in (CONV3, CONV3_STRIDED, DW7, ConvSpec(96, 96, (3, 3), (2, 2), (1, 1), (1, 1), 96)):
        for r in (1, 2, 4, 8, 32):
            for device in (CPU, CUDA):
                for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
                    got = route(spec, r, device, dtype, routing="fixed")
                    assert routing.unsupported(got.implementation, spec, r, device, dtype) is None, (spec, r, got)
                    assert got.reason


def test_a_request_that_cannot_run_falls_back_and_says_why():
    strided_dw = ConvSpec(96, 96, (3, 3), (2, 2), (1, 1), (1, 1), 96)
    got = route(strided_dw, 8, CPU, torch.float32, "depthwise-tiles", routing="fixed")
    assert got.implementation == "depthwise-table" and "cannot run this layer" in got.reason
    assert route(CONV3, 8, CPU, torch.float32, "torch", routing="fixed") == routing.Route("torch", "requested")
    assert route(DW7, 8, CPU, torch.float32, "torch", routing="fixed").implementation.startswith("depthwise-")
    with pytest.raises(ValueError, match="unknown implementation 'cudnn'"):
        route(CONV3, 8, CPU, torch.float32, "cudnn")
    with pytest.raises(ValueError, match="choose one of measured, fixed"):
        ss.set_routing("fast")


def test_routing_setting_from_the_environment(monkeypatch):
    monkeypatch.setenv("SPARK_SPARSE_ROUTING", "measured")
    assert routing.get_routing() == "measured"
    with routing.routing_mode("fixed"):
        assert routing.get_routing() == "fixed"
    assert routing.get_routing() == "measured"
    monkeypatch.setenv("SPARK_SPARSE_ROUTING", "fastest")
    with pytest.raises(ValueError, match="SPARK_SPARSE_ROUTING"):
        routing.get_routing()


# ---- GPU candidates, dtype rules (no GPU needed: CUDA is only named) -----------------------------

def test_gpu_candidates_and_bf16_never_spconv(monkeypatch):
    table = candidates(CONV3, 8, CUDA, torch.float32)
    assert {"torch", "tiles"} <= set(table) and ("spconv" in table) == spconv_available()
    assert "spconv" not in candidates(CONV3, 8, CUDA, torch.bfloat16)
    assert "depthwise-triton" in candidates(DW7, 8, CUDA, torch.bfloat16)
    assert "depthwise-triton" not in candidates(DW7, 8, CPU, torch.float32)  # the interpreter is for tests
    assert "spconv" not in candidates(CONV3, 8, CPU, torch.float32)  # the same gather-GEMM as torch
    # gather-conv: where the BLAS and oneDNN may differ (CPU fp32, any CUDA dtype), not where torch
    # already runs the matmul in oneDNN (CPU bf16) or oneDNN has no kernels (CPU fp64)
    assert "gather-conv" in candidates(CONV3, 8, CPU, torch.float32)
    assert all("gather-conv" in candidates(CONV3, 8, CUDA, d) for d in (torch.float32, torch.bfloat16))
    assert all("gather-conv" not in candidates(CONV3, 8, CPU, d) for d in (torch.bfloat16, torch.float64))

    # measured routing under bf16 never times spconv, however fast it would be
    timed = []

    def fake_time(options, trial, device, repeats=2):
        timed.extend(options)
        return {o: (0.001 if o == "spconv" else 1.0 + len(o) * 1e-3) for o in options}, {}

    monkeypatch.setattr(route_module, "time_candidates", fake_time)
    monkeypatch.setattr(route_module, "environment_key", lambda device: "fake cuda")
    monkeypatch.setattr(cache, "store", lambda *a, **k: None)
    routing.forget_measurements()
    for spec in (CONV3, CONV3_STRIDED):
        for r in (1, 2, 4, 8):
            for mode in ("fixed", "measured"):
                got = route(spec, r, CUDA, torch.bfloat16, routing=mode, workload=Workload(16),
                            trial=lambda impl, backward: None)
                assert got.implementation != "spconv", (spec, r, mode)
            asked = route(spec, r, CUDA, torch.bfloat16, "spconv", routing="fixed")
            assert asked.implementation == "torch" and "bf16" in asked.reason
    assert timed and "spconv" not in timed
    routing.forget_measurements()
    if spconv_available():
        assert route(CONV3, 8, CUDA, torch.float16, routing="measured", workload=Workload(16),
                     trial=lambda impl, backward: None).implementation == "spconv"
    routing.forget_measurements()


# ---- measured routing: tuning once, the cache ----------------------------------------------------

def train_step(encoder, images, visible):
    out = encoder(images, visible)
    sum(o.sum() for o in out).backward()


def train_until_settled(encoder, images, visible, limit=16):
    """Training steps until measured routing has decided every layer shape (on the CPU its samples are
    the steps' own calls, so that takes a few); how many it took."""
    for steps in range(1, limit + 1):
        train_step(encoder, images, visible)
        if not routing.tuning_stats()["pending"]:
            return steps
    raise AssertionError(f"measured routing still sampling after {limit} steps: {routing.tuning_stats()}")


def test_measured_routing_tunes_once_then_reads_the_cache(fresh_cache):
    images, visible = inputs()
    encoder = ss.sparsify(cached_model("resnet18")).set_routing("measured")
    assert 1 < train_until_settled(encoder, images, visible)  # a few steps (at most 16: it raises)
    first = routing.tuning_stats()
    doc = json.loads(fresh_cache.read_text())
    assert doc["version"] == cache.VERSION
    (decisions,) = doc["environments"].values()
    # one decision per distinct conv shape (table convs and 1×1 convs)
    assert first["tuned"] == len(decisions) > 1 and first["cached"] == 0
    routes = {p: r for p, r in conv_routes(encoder, images, visible).items() if p != "maxpool"}  # convs only
    for path, r in routes.items():
        assert r.implementation in ("matmul", "pointwise-conv", "torch", "gather-conv", "tiles"), (path, r)
        assert r.reason.startswith("measured"), (path, r)

    routing.forget_measurements()  # as a new process: only the file is left
    again = ss.sparsify(cached_model("resnet18")).set_routing("measured")
    train_step(again, images, visible)
    assert routing.tuning_stats()["tuned"] == 0
    assert routing.tuning_stats()["cached"] == len(decisions)
    assert {p: r.implementation for p, r in conv_routes(again, images, visible).items() if p in routes} == \
        {p: r.implementation for p, r in routes.items()}


def test_calls_without_gradients_never_tune(fresh_cache):
    images, visible = inputs()
    encoder = ss.sparsify(cached_model("resnet18")).set_routing("measured")
    routes = conv_routes(encoder, images, visible)
    assert routing.tuning_stats()["tuned"] == 0 and not fresh_cache.exists()
    assert any("not measured yet" in r.reason for r in routes.values())


def test_fixed_routing_never_tunes(fresh_cache):
    images, visible = inputs()
    train_step(ss.sparsify(cached_model("convnext_atto")).set_routing("fixed"), images, visible)
    assert routing.tuning_stats()["tuned"] == 0 and not fresh_cache.exists()


def test_set_routing_reaches_every_routed_layer():
    """An encoder's routing setting reaches its max-pool as well as its convs."""
    encoder = ss.sparsify(cached_model("resnet18"))
    routed = [m for m in encoder.modules() if isinstance(m, RoutedModule)]
    assert any(type(m).__name__ == "SparseMaxPool2d" for m in routed)
    for policy in ("fixed", "measured", None):
        encoder.set_routing(policy)
        assert {m.routing for m in routed} == {policy}


def test_a_corrupt_cache_is_ignored_with_one_warning_and_rewritten(fresh_cache):
    fresh_cache.write_text("{ not json")
    images, visible = inputs()
    encoder = ss.sparsify(cached_model("resnet18")).set_routing("measured")
    with pytest.warns(RuntimeWarning, match="routing cache .*ignoring it") as caught:
        train_until_settled(encoder, images, visible)
    assert len([w for w in caught if "routing cache" in str(w.message)]) == 1
    assert json.loads(fresh_cache.read_text())["environments"]


@pytest.mark.parametrize("bad", [{"implementation": "tiles"}, "torch", {"implementation": "tiles", "ms": [1, 2]},
                                 {"implementation": "tiles", "ms": {"tiles": "fast"}},
                                 {"implementation": "tiles", "ms": {"tiles": float("nan")}}])
def test_a_malformed_decision_is_measured_again_and_rewritten(fresh_cache, bad):
    """A hand-edited decision without its timings (or of another shape) crashed every run before, and
    stayed in the file: now it is ignored with one warning and replaced by a measured one."""
    layer = SparseConv2d(CONV3, bias=False)
    layer.routing = "measured"
    x = inputs()  # only for the key below: a 3×3 conv on 8×8 patch blocks, fp32, batch 2
    from spark_sparse.features import SparseFeatures
    from spark_sparse.geometry import Geometry
    g = torch.Generator().manual_seed(0)
    feats = SparseFeatures.from_dense(torch.randn(2, 64, 16, 16, generator=g), Geometry(x[1], 32), stride=4)
    key = route_module.layer_key(CONV3, feats.level.r, torch.float32, Workload(2))
    env = route_module.environment_key(CPU)
    fresh_cache.write_text(json.dumps({"format": cache.FORMAT, "version": cache.VERSION,
                                       "environments": {env: {key: bad}}}))
    with pytest.warns(RuntimeWarning, match=r"ignoring 1 malformed decision\(s\)"):
        for _ in range(20):
            layer(feats).features.sum().backward()
            if routing.tuning_stats()["tuned"]:
                break
    assert routing.tuning_stats()["tuned"] == 1
    assert cache.well_formed(json.loads(fresh_cache.read_text())["environments"][env][key])


def test_a_cache_path_that_is_not_a_regular_file_is_ignored_not_waited_on(tmp_path):
    fifo = tmp_path / "routing.json"
    os.mkfifo(fifo)  # open() would block until a writer came
    with pytest.warns(RuntimeWarning, match="not a regular file"):
        assert cache.read(str(fifo)) == {}


def test_another_versions_cache_is_ignored_with_a_warning(tmp_path):
    path = tmp_path / "routing.json"
    path.write_text(json.dumps({"format": cache.FORMAT, "version": cache.VERSION - 1, "environments": {"env": {}}}))
    with pytest.warns(RuntimeWarning, match=f"written by routing cache version {cache.VERSION - 1}"):
        assert cache.read(str(path)) == {}


def test_a_bad_routing_variable_is_refused_before_any_command_runs(monkeypatch, tmp_path, capsys):
    from spark_sparse.cli import main
    monkeypatch.setenv("SPARK_SPARSE_ROUTING", "bogus")
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--steps", "1"]) == 2
    assert "$SPARK_SPARSE_ROUTING: unknown routing 'bogus'; choose one of measured, fixed" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written
    assert main(["bench", "--quick", "--out", str(tmp_path / "bench")]) == 2  # any command, before it writes
    assert not (tmp_path / "bench").exists()
    assert "$SPARK_SPARSE_ROUTING: unknown routing 'bogus'" in capsys.readouterr().err
    # an explicit --routing wins: the variable is not read (this run stops at its own bad option)
    assert main(["pretrain", "--routing", "fixed", "--batch-size", "0", "--out", str(tmp_path / "explicit")]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    from spark_sparse.train.trainer import pretrain  # the API refuses it too, before the run
    import argparse
    assert pretrain(argparse.Namespace(out=str(tmp_path / "api"), steps=1)) == 2
    assert not (tmp_path / "api").exists()


def _store_many(path, worker, count):
    for i in range(count):
        cache.store("env", {f"worker{worker}-layer{i}": {"implementation": "torch", "ms": {"torch": 1.0}}}, path)


def test_concurrent_writers_lose_no_decision(tmp_path):
    path = str(tmp_path / "routing.json")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_store_many, args=(path, w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(cache.read(path)["env"]) == 60
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # no temporary file left behind


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("SPARK_SPARSE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_path() == str(tmp_path / "spark_sparse" / "routing.json")
    monkeypatch.setenv("SPARK_SPARSE_CACHE_DIR", str(tmp_path / "mine"))
    assert cache.cache_path() == str(tmp_path / "mine" / "routing.json")


def test_bench_prints_every_route_and_the_tuning_time(fresh_cache, tmp_path, capsys):
    from spark_sparse.cli import main
    code = main(["bench", "--quick", "--models", "resnet18", "--modes", "fwd", "--no-memory", "--no-plots",
                 "--profile-model", "none", "--routing", "measured", "--no-progress", "--out", str(tmp_path / "b")])
    printed = capsys.readouterr().out
    assert code == 0
    assert "routes of sparse[auto], resnet18 cpu fp32 batch 2 (measured routing)" in printed
    assert "tuning" in printed and "layer shapes measured" in printed
    doc = json.loads((tmp_path / "b" / "results.json").read_text())
    (rec,) = doc["results"]
    assert rec["tuning"]["tuned_layers"] > 0 and doc["routing"] == "measured"
    layers = rec["routes"]["layers"]
    assert len(layers) == 21  # every conv of resnet18 and its max-pool
    assert [row["implementation"] for row in layers if row["implementation"].startswith("maxpool")]
    for row in layers:
        if row["choice"]:  # each 3×3 conv and the stem, with its reason
            assert f"  {row['path']}" in printed and row["reason"].startswith("measured")


def test_an_unwritable_cache_warns_and_training_goes_on(tmp_path, monkeypatch):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("SPARK_SPARSE_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    routing.forget_measurements()
    images, visible = inputs()
    encoder = ss.sparsify(cached_model("resnet18")).set_routing("measured")
    with pytest.warns(RuntimeWarning, match="cannot write it"):
        train_until_settled(encoder, images, visible)
    assert routing.tuning_stats()["tuned"] > 0
    tuned = routing.tuning_stats()["tuned"]
    train_step(encoder, images, visible)  # the decisions stay in memory
    assert routing.tuning_stats()["tuned"] == tuned
    routing.forget_measurements()


def test_a_failing_candidate_drops_out_with_its_error():
    from spark_sparse.routing.measure import time_candidates

    def trial(impl, backward):
        if impl == "tiles" and backward:
            raise RuntimeError("out of memory")

    seconds, errors = time_candidates(["torch", "tiles"], trial, CPU)
    assert list(seconds) == ["torch"] and "out of memory" in errors["tiles"]


@pytest.mark.parametrize("costs, expected", [
    ({"torch": 0.050, "tiles": 0.100}, {"torch": 1 + 2, "tiles": 1 + 1}),   # tiles > 1.25× slower: one sample
    ({"torch": 0.050, "tiles": 0.055}, {"torch": 1 + 2, "tiles": 1 + 2}),   # close: two each
    ({"torch": 0.005, "tiles": 0.009}, {"torch": 1 + 3, "tiles": 1 + 3}),   # cheap layer: three each
])
def test_side_trials_take_the_samples_the_shared_policy_asks_for(monkeypatch, costs, expected):
    """Trials (CUDA) and the CPU's samples follow one repeat policy (measure.samples_wanted): an
    untimed warm-up call of each candidate, then the timed samples it asks for."""
    from types import SimpleNamespace

    from spark_sparse.routing import measure

    clock, calls = [0.0], {impl: 0 for impl in costs}

    def trial(impl, backward):
        calls[impl] += 1
        clock[0] += costs[impl]

    monkeypatch.setattr(measure, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    seconds, errors = measure.time_candidates(list(costs), trial, CPU)
    assert calls == expected and not errors
    assert seconds == pytest.approx(costs)


def test_pretrain_says_its_routing_and_what_it_measured(tmp_path):
    """The log names the policy and the cache, and at the end what measured routing did: a first run
    measures, a second one reads the cache and measures nothing."""
    import subprocess
    import sys

    from tests.pretrain_utils import REPO, TINY, env
    environment = dict(env(), SPARK_SPARSE_CACHE_DIR=str(tmp_path / "cache"), SPARK_SPARSE_ROUTING="measured")
    said = []
    for name in ("first", "second"):
        out = subprocess.run([sys.executable, "-m", "spark_sparse.cli", "pretrain", *TINY, "--steps", "10",
                              "--out", str(tmp_path / name)], cwd=REPO, env=environment, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        lines = out.stdout.splitlines()
        assert f"  routing: measured (decisions cached in {tmp_path / 'cache' / 'routing.json'}" in out.stdout
        said.append([line for line in lines if line.startswith("routing: ")])
    import re
    pattern = (r"routing: (\d+) layer shape\(s\) measured in this run \(tuning added about [\d.]+ s\), "
               r"(\d+) read from the routing cache(?:, (\d+) still being measured)?$")
    (first,), (second,) = said
    measured, read, pending = (int(n or 0) for n in re.fullmatch(pattern, first).groups())
    measured2, read2, pending2 = (int(n or 0) for n in re.fullmatch(pattern, second).groups())
    assert measured > 0 and read == 0
    # what the first run decided, the second reads; it measures at most what the first left pending
    # (shapes called once a step may need more steps than these to settle)
    assert read2 == measured and measured2 <= pending
