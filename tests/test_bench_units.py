"""The benchmark's parts that can be checked exactly: MAC accounting, ratios, tables, README block,
interleaving, background load, the step adapter and its phases, contenders, the command line.

Nothing here asserts a speed: timings on a shared CI machine prove nothing.
"""
import json
import shlex

import pytest
import timm
import torch

import spark_sparse as ss
from spark_sparse.benchmarks import markdown, readme, schema
from spark_sparse.benchmarks.contenders import Call, DenseEncoder, make_inputs
from spark_sparse.benchmarks.macs import dense_encoder_macs, encoder_macs, ideal_ratio, mac_ratio, step_macs
from spark_sparse.benchmarks.ratios import add_ratios, contention
from spark_sparse.benchmarks.timing import paired_speedup, time_interleaved
from spark_sparse.cli import build_parser, main
from spark_sparse.flops import dense_macs


# ---------------------------------------------------------------------------------------------
# MACs

def test_mac_accounting_is_exact():
    model = timm.create_model("resnet18")
    enc = ss.sparsify(model)
    visible = ss.random_visible(3, (2, 3), 0.5, generator=torch.Generator().manual_seed(1))
    dense = dense_encoder_macs(model, 3, (64, 96))
    assert dense == dense_macs(model, 3, (64, 96))  # one image times the batch is exact
    macs = encoder_macs(enc, visible, dense)
    assert macs["masked-dense"] == macs["dense"] == dense
    assert macs["sparse"] * visible.numel() == dense * int(visible.sum())
    assert ideal_ratio(visible) == visible.numel() / int(visible.sum()) == 2.0
    assert mac_ratio(macs) == pytest.approx(2.0)
    assert step_macs(macs, None) is None
    assert step_macs(macs, 10) == {k: v + 10 for k, v in macs.items()}
    with pytest.raises(ValueError, match="no visible patch"):
        ideal_ratio(torch.zeros(1, 2, 2, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------
# ratios, tables, JSON, README

NOT_MEASURED = "not measured in the whole step (--step-backends)"


def _record(times, memory=None, step_unavailable=True):
    contenders = {"sparse[torch]": {"kind": "sparse", "backend": "torch", "memory_format": "sites x channels"},
                  "sparse[auto]": {"kind": "sparse", "backend": "auto", "memory_format": "sites x channels"},
                  "masked-dense": {"kind": "masked_dense", "backend": None, "memory_format": "contiguous"},
                  "dense": {"kind": "dense", "backend": None, "memory_format": "channels_last"}}
    time_ms = {"fwd": {n: {"median": sorted(t)[len(t) // 2], "repeats": t} for n, t in times.items()}, "step": {}}
    rec = {"model": "resnet50", "device": "cpu", "dtype": "fp32", "batch": 4, "image_size": [224, 224],
           "mask_ratio": 0.6, "visible_patches": 80, "total_patches": 196, "visible_fraction": 80 / 196,
           "ideal_ratio": 196 / 80, "threads": 2, "contenders": contenders,
           "macs": {"encoder": {"sparse": 100, "masked-dense": 245, "dense": 245}, "head": None, "step": None},
           "time_ms": time_ms, "unavailable": {"step": {n: NOT_MEASURED for n in contenders}} if step_unavailable
           else {}, "errors": {}, "peak_memory_bytes": memory or {}}
    return add_ratios(rec)


def _doc(records):
    return {"schema": schema.SCHEMA, "command": "spark-sparse bench --models resnet50", "note": "busy machine",
            "environment": {"date_utc": "2026-01-01T00:00:00+00:00", "git_commit": "abc", "python": "3.11",
                            "versions": {"torch": "2", "timm": "1", "spconv": None},
                            "cpu": {"model": "cpu", "usable_cores": 2, "torch_threads": 2, "torch_interop_threads": 2},
                            "cuda": None, "load_average_start": [1, 1, 1], "load_average_end": [2, 2, 2]},
            "config": {"modes": ["fwd", "step"], "warmup": 1, "repeats": 3, "backends": ["torch", "auto"],
                       "dense_format": "auto"},
            "results": records, "skipped": [{"model": "convnext_tiny", "device": "cpu", "dtype": "fp32",
                                             "reason": "not sparsifiable yet: X"}], "profiles": []}


def test_the_environment_records_the_memory_state():
    from spark_sparse.benchmarks.environment import environment, memory_info
    mem = memory_info()
    if mem is None:
        pytest.skip("no /proc/meminfo here")
    assert mem["total_gib"] > 0 and 0 <= mem["free_gib"] <= mem["total_gib"]
    assert 0 <= mem["page_cache_gib"] <= mem["total_gib"]
    assert environment()["memory_start"].keys() == mem.keys()


def test_speedups_pair_the_repeats_of_one_round():
    rec = _record({"sparse[torch]": [10.0, 20.0, 10.0], "sparse[auto]": [5.0, 5.0, 10.0],
                   "masked-dense": [10.0, 20.0, 30.0], "dense": [5.0, 10.0, 40.0]},
                  memory={"fwd": {"sparse[torch]": 50, "sparse[auto]": 40, "masked-dense": 100, "dense": 80}})
    # per round masked-dense/sparse[auto]: 2, 4, 3 → median 3 (the ratio of medians would say 4)
    assert rec["speedup"]["fwd"]["sparse[auto]"] == {"vs_masked_dense": 3.0, "vs_dense": 2.0}
    assert rec["speedup"]["fwd"]["sparse[torch]"]["vs_masked_dense"] == 1.0
    assert rec["speedup"]["step"] == {}
    assert rec["mac_ratio"] == {"encoder": 2.45}
    assert rec["memory_ratio"]["fwd"]["sparse[auto]"] == {"vs_masked_dense": 2.5, "vs_dense": 2.0}
    assert paired_speedup([4.0], [2.0, 8.0]) == 2.0
    with pytest.raises(ValueError):
        paired_speedup([], [1.0])


def test_tables_and_json():
    rec = _record({"sparse[torch]": [10.0, 20.0, 10.0], "sparse[auto]": [5.0, 5.0, 10.0],
                   "masked-dense": [10.0, 20.0, 30.0], "dense": [5.0, 10.0, 40.0]})
    doc = _doc([rec])
    schema.validate(doc)
    rows = markdown.headline_table(doc).splitlines()
    assert rows[2] == ("| resnet50 | cpu | fp32 | 4 | 0.60 | 80/196 | 2.45× | 2.45× | 3.00× / 2.00× | – | n/a | n/a "
                       "| – |")
    md = markdown.markdown(doc, ["out/speedup.png"])
    assert "Generated by `spark-sparse bench --models resnet50`" in md and "note: busy machine" in md
    assert "![speedup.png](speedup.png)" in md
    assert "| fwd | 0.60 | 10.0 | 5.0 | 20.0 | 10.0 |" in md  # medians of every contender
    assert "| step | 0.60 | n/a | n/a | n/a | n/a |" in md      # the step's absence is shown, not hidden
    assert "dense (channels_last)" in md
    assert "- convnext_tiny (cpu fp32): not sparsifiable yet: X" in md
    assert "memory at start" not in md  # not recorded (a document from before, or not Linux): no line
    doc["environment"]["memory_start"] = {"total_gib": 23.5, "free_gib": 13.9, "page_cache_gib": 9.5}
    assert "- memory at start: 23.5 GiB, 13.9 GiB free, 9.5 GiB page cache" in markdown.markdown(doc, [])
    # JSON: no NaN or infinity, ever
    rec["speedup"]["fwd"]["sparse[auto]"]["vs_dense"] = float("nan")
    parsed = json.loads(schema.to_json(doc))
    assert parsed["results"][0]["speedup"]["fwd"]["sparse[auto]"]["vs_dense"] is None


def test_validate_rejects_broken_documents():
    good = _doc([_record({"sparse[auto]": [1.0], "sparse[torch]": [1.0], "masked-dense": [2.0], "dense": [1.0]})])
    schema.validate(good)
    for breaking in (lambda d: d.pop("environment"), lambda d: d.update(schema="other"),
                     lambda d: d["results"][0].pop("macs"),
                     lambda d: d["results"][0]["time_ms"]["fwd"]["dense"].update(median=0.0),
                     # hand-damaged documents: refused here, not by a KeyError while the tables are written
                     lambda d: d.update(environment={}), lambda d: d["environment"]["cpu"].pop("model"),
                     lambda d: d["results"][0]["time_ms"]["fwd"]["dense"].pop("median"),
                     lambda d: d["results"][0]["time_ms"]["fwd"].update(dense=None)):
        doc = json.loads(json.dumps(good))
        breaking(doc)
        with pytest.raises(ValueError):
            schema.validate(doc)


def test_readme_block_is_regenerated(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"# x\n\nintro\n\n{readme.README_START}\nold table\n{readme.README_END}\n\nrest\n")
    rec = _record({"sparse[auto]": [1.0], "sparse[torch]": [1.0], "masked-dense": [2.0], "dense": [1.5]})
    readme.update_readme(str(path), _doc([rec]), str(tmp_path / "benchmarks" / "results"))
    text = path.read_text()
    assert "old table" not in text and text.startswith("# x\n\nintro\n") and text.endswith("\n\nrest\n")
    assert "[benchmarks/results/results.md](benchmarks/results/results.md)" in text
    assert markdown.headline_table(_doc([rec])) in text and "Note: busy machine" in text
    before = path.read_text()
    with pytest.raises(ValueError, match="no results"):  # an empty table never replaces the last good one
        readme.update_readme(str(path), _doc([]), str(tmp_path))
    with pytest.raises(ValueError, match="--note must not contain"):  # it would end the block early
        readme.update_readme(str(path), dict(_doc([rec]), note=f"a {readme.README_END} b"), str(tmp_path))
    assert path.read_text() == before
    path.write_text("# no markers\n")
    with pytest.raises(ValueError, match="no generated block"):
        readme.update_readme(str(path), _doc([rec]), str(tmp_path))


# ---------------------------------------------------------------------------------------------
# timing, memory

def test_interleaving_rotates_and_a_failure_keeps_the_others():
    order, count = [], {"b": 0}

    def call(name):
        def run():
            order.append(name)
            if name == "b":
                count["b"] += 1
                if count["b"] == 3:
                    raise RuntimeError("out of memory")
        return Call(run)

    times, errors = time_interleaved({n: call(n) for n in "abc"}, warmup=1, repeats=3, device=torch.device("cpu"))
    assert order[:9] == list("abc" "bca" "cab")
    assert errors == {"b": "RuntimeError: out of memory"} and "b" not in times
    assert len(times["a"]) == len(times["c"]) == 3 and all(t > 0 for t in times["a"])


# ---------------------------------------------------------------------------------------------
# the SparK step adapter

def test_step_contenders_run_a_real_spark_step_split_into_phases():
    from spark_sparse.benchmarks.case import Case
    from spark_sparse.benchmarks.step import SparkStep
    case = Case("resnet18", "cpu", "fp32", 2, (64, 64), ["torch"], decoder_width=32, step_dtypes=("bf16",),
                decoder_checkpointing=True, encoder_checkpointing=True)
    images, visible = case.inputs(0.5)
    dense = dense_encoder_macs(case.model, 2, (64, 64))
    assert case.head_macs(images, visible, dense) > 0
    calls, unavailable = case.calls("step", images, visible)
    assert unavailable == {} and set(calls) == {"sparse[torch]", "sparse[torch] bf16", "sparse[torch] ckpt",
                                                "sparse[torch] ckpt-all", "masked-dense", "dense", "spark-published"}
    described = case.step_contenders()["spark-published"].describe()
    assert described["head_format"] == "contiguous" and described["amp"] == "fp32" and described["modes"] == ["step"]
    published = case.step("spark-published")
    assert isinstance(published, SparkStep) and published.model.head_format == "contiguous"
    assert case.step("sparse[torch] ckpt").model.decoder.checkpointing
    recomputing = case.step("sparse[torch] ckpt-all").model
    assert recomputing.decoder.checkpointing and recomputing.encoder.checkpointing
    assert not case.contenders["sparse[torch]"].encoder.checkpointing  # the other contenders' encoder is untouched
    assert case.step("sparse[torch] bf16").amp_dtype == torch.bfloat16
    before = case.contenders["sparse[torch]"].encoder.conv1.weight.detach().clone()
    times, errors = time_interleaved(calls, warmup=0, repeats=2, device=torch.device("cpu"))
    assert errors == {} and set(times) == set(calls)
    assert not torch.equal(before, case.contenders["sparse[torch]"].encoder.conv1.weight)  # the optimizer stepped
    step = case.step("sparse[torch]")
    assert len(step.phases) == 2 and set(step.median_phases(2)) == {
        "encoder_fwd", "densify", "decoder_fwd", "loss", "decoder_bwd", "densify_bwd", "encoder_bwd", "optimizer"}
    params = {id(p) for p in step.model.encoder.parameters()}
    head_bytes = sum(4 * p.numel() for p in step.model.parameters() if id(p) not in params)
    assert step.memory["head_weights_grads"] == 2 * head_bytes
    assert step.memory["optimizer_state"] >= 2 * 4 * sum(p.numel() for p in step.model.parameters())  # AdamW: 2 moments
    # the published contender has its own weights: no other contender's format or update reaches it
    assert not torch.equal(case.step("spark-published").model.encoder.conv1.weight,
                           case.contenders["sparse[torch]"].encoder.conv1.weight)


def test_step_tables_show_phases_published_checkpointing_and_contention():
    def rec(load, step_times, fwd_bwd):
        contenders = {"sparse[auto]": {"kind": "sparse", "backend": "auto", "memory_format": "sites x channels"},
                      "dense": {"kind": "dense", "backend": None, "memory_format": "contiguous"},
                      "sparse[auto] ckpt": {"kind": "sparse", "backend": "auto", "memory_format": "sites x channels",
                                            "amp": "fp32", "modes": ["step"]},
                      "sparse[auto] ckpt-all": {"kind": "sparse", "backend": "auto",
                                                "memory_format": "sites x channels", "amp": "fp32", "modes": ["step"]},
                      "spark-published": {"kind": "published", "backend": None, "memory_format": "contiguous",
                                          "amp": "fp32", "modes": ["step"]}}
        r = {"model": "resnet50", "device": "cpu", "dtype": "fp32", "batch": 4, "image_size": [224, 224],
             "mask_ratio": 0.6, "background_load": load, "contenders": contenders, "macs": {},
             "time_ms": {"step": {n: {"median": t[0], "repeats": t} for n, t in step_times.items()},
                         "fwd_bwd": {n: {"median": t[0], "repeats": t} for n, t in fwd_bwd.items()}},
             "peak_memory_bytes": {"step": {"sparse[auto]": 1000, "sparse[auto] ckpt": 600,
                                            "sparse[auto] ckpt-all": 450}},
             "step_phases_ms": {"sparse[auto]": {"encoder_fwd": 10.0, "decoder_fwd": 20.0}},
             "step_memory_bytes": {}}
        return add_ratios(r)

    quiet = rec(0, {"sparse[auto]": [10.0, 10.0], "sparse[auto] ckpt": [12.0, 11.0],
                    "sparse[auto] ckpt-all": [12.0, 13.0], "spark-published": [30.0, 20.0]},
                {"sparse[auto]": [1.0], "dense": [2.0]})
    busy = rec(2, {"sparse[auto]": [10.0], "spark-published": [10.0]}, {"sparse[auto]": [1.0], "dense": [1.5]})
    assert quiet["speedup"]["step"]["sparse[auto]"]["vs_published"] == 2.5
    cost, both = quiet["checkpointing"]["sparse[auto] ckpt"], quiet["checkpointing"]["sparse[auto] ckpt-all"]
    assert cost["peak_memory_cut"] == pytest.approx(0.4) and cost["time_cost"] == pytest.approx(0.15)
    assert (cost["recomputed"], both["recomputed"], both["against"]) == ("decoder", "encoder + decoder", "sparse[auto]")
    assert both["peak_memory_cut"] == pytest.approx(0.55) and both["time_cost"] == pytest.approx(0.25)
    [kept] = contention([quiet, busy])
    assert (kept["quiet"], kept["loaded"], kept["kept"], kept["load"]) == (2.0, 1.5, 0.75, 2)
    text = markdown.step_tables({"results": [quiet, busy]})
    assert "| resnet50 | fp32 | 4 | 0.60 | 0 | sparse[auto] | fp32 | 10 | 30 | 2.50× | – |" in text
    assert "| resnet50 | fp32 | 4 | 0.60 | 0 | sparse[auto] | 10 | 20 | 10 |" in text
    assert "| resnet50 | fp32 | 4 | 0.60 | 0 | sparse[auto] ckpt | decoder | sparse[auto] | 40 % | +15 % |" in text
    assert ("| resnet50 | fp32 | 4 | 0.60 | 0 | sparse[auto] ckpt-all | encoder + decoder | sparse[auto] | 55 % "
            "| +25 % |") in text
    table = markdown.contention_table({"results": [quiet, busy]})
    assert "| resnet50 | fp32 | 4 | 0.60 | 2 | 2.00× | 1.50× | 75 % |" in table


def test_background_load_runs_busy_processes_and_stops_them():
    from spark_sparse.benchmarks.load import background_load
    with background_load(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)
    with background_load(0) as procs:
        assert procs == []
    with pytest.raises(ValueError, match=">= 0"):
        with background_load(-1):
            pass


def test_a_model_that_cannot_be_sparsified_is_skipped_with_the_reason():
    from spark_sparse.benchmarks.config import BenchConfig
    from spark_sparse.benchmarks.runner import run
    cfg = BenchConfig.quick_config(models=["mobilenetv3_small_050"], profile_model=None, memory=False)
    doc = run(cfg, progress=False)
    assert doc["results"] == [] and len(doc["skipped"]) == 1
    assert doc["skipped"][0]["model"] == "mobilenetv3_small_050"
    assert doc["skipped"][0]["reason"].startswith("not sparsifiable yet: ")


# ---------------------------------------------------------------------------------------------
# contenders and the command line

def test_plain_dense_encoder_is_the_timm_backbone():
    model = timm.create_model("resnet18").eval()
    dense = DenseEncoder(model).eval()
    x = torch.randn(1, 3, 64, 96)
    outs = dense(x, None)
    assert [o.shape[1] for o in outs] == dense.channels and [96 // o.shape[-1] for o in outs] == dense.strides
    assert torch.equal(outs[-1], model.forward_features(x))


def test_dense_memory_format_is_set_and_reported():
    from spark_sparse.benchmarks.contenders import build_contenders, choose_dense_format
    contenders = {c.name: c for c in build_contenders(timm.create_model("resnet18"), ["torch"])}
    images, visible = make_inputs(1, (64, 64), 0.5, 0, "cpu")
    masked = contenders["masked-dense"]
    assert choose_dense_format(masked, images, visible, torch.float32, "fwd", "channels_last") == "channels_last"
    assert masked.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert masked.format_input(images).is_contiguous(memory_format=torch.channels_last)
    picked = choose_dense_format(contenders["dense"], images, visible, torch.float32, "fwd", "auto", trials=1)
    assert picked in ("contiguous", "channels_last") and contenders["dense"].memory_format == picked
    assert choose_dense_format(contenders["sparse[torch]"], images, visible, torch.float32, "fwd", "auto") == \
        "sites x channels"


def test_command_line_round_trips_and_rejects_bad_values(tmp_path, capsys):
    from spark_sparse.commands.bench import build_config
    parser = build_parser()
    args = parser.parse_args(["bench", "--models", "resnet50", "--mask-ratios", "0", "0.6", "--batch", "8",
                              "--size", "192", "256", "--threads", "2", "--out", "x", "--note", "load 3"])
    cfg = build_config(args)
    assert (cfg.models, cfg.mask_ratios, cfg.batches, cfg.image_size, cfg.threads) == \
           (["resnet50"], [0.0, 0.6], [8], (192, 256), 2)
    again = build_config(parser.parse_args(shlex.split(cfg.command)[1:]))
    assert again.command == cfg.command and (again.models, again.image_size, again.note) == \
           (cfg.models, cfg.image_size, "load 3")
    assert build_config(parser.parse_args(["bench", "--quick", "--repeats", "3"])).repeats == 3
    assert build_config(parser.parse_args(["bench", "--keep-freed-memory"])).keep_freed_memory
    assert not build_config(parser.parse_args(["bench"])).keep_freed_memory
    for bad, message in ((["--mask-ratios", "1.0"], "--mask-ratios must be in [0, 1)"),
                         (["--size", "100"], "multiples of 32"), (["--batch", "0"], "--batch must be >= 1")):
        assert main(["bench", *bad, "--out", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err


QUICK_FWD = ["--quick", "--models", "resnet18", "--modes", "fwd", "--profile-model", "none", "--no-memory",
             "--no-plots", "--no-progress"]


@pytest.mark.parametrize("bad, message", [
    (["--threads", "-2"], "--threads must be >= 1, got -2"), (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--mask-ratios", "0.9"], "--mask-ratios at --size 64: 0.9 keeps round(4 × (1 − 0.9)) = 0"),
    (["--mask-ratios", "0.1"], "--mask-ratios at --size 64: 0.1 hides none"),
    (["--size", "32"], "--mask-ratios at --size 32: 0.5 keeps"),
    (["--profile-model", "resnet18", "--profile-ratio", "0.99"], "--profile-ratio at --size 64: 0.99 keeps"),
    (["--out", ""], "--out is empty"),
    (["--modes", "step", "--step-contenders", "bogus"], "--step-contenders 'bogus': no such step contender"),
    (["--modes", "step", "--step-contenders", "sparse[torch]"], "choose from 'sparse[auto]', 'masked-dense'"),
    (["--decoder-width", "3", "--modes", "step"], "--decoder-width 3 is too small to halve 5 times; use at least 32"),
    (["--seed", "99999999999999999999999"], "--seed must be in 0 … 4294967295"),
    (["--profile-only"], "--profile-only has no effect with --profile-model none"),
    (["--profile-model", "resnet18", "--profile-batch", "-4"], "--profile-batch must be >= 1, got -4"),
    (["--profile-model", "resnet18", "--profile-batch", "0"], "--profile-batch must be >= 1, got 0"),
    (["--step-dtypes", "bf16"], "--step-dtypes has no effect without step in --modes"),
    (["--decoder-checkpointing", "--no-published"],
     "--decoder-checkpointing, --no-published have no effect without step in --modes"),
    (["--decoder-width", "64"], "--decoder-width has no effect without step in --modes or --head-variants"),
    (["--memory-modes", "step"], "--memory-modes step: not among --modes (fwd)"),
    (["--modes", "fwd", "fwd_bwd", "--memory-modes", "fwd"], "--memory-modes has no effect with --no-memory"),
    (["--compile-head"], "--compile-head has no effect without --head-variants"),
    (["--batch", "-3"], "--batch must be >= 1, got -3"), (["--size", "63"], "--size 63x63 is not a multiple of 32"),
    (["--modes", "step", "--decoder-width", "0"], "--decoder-width 0 is too small"),
    (["--background-load", "-1"], "--background-load must be >= 0, got -1"),
    (["--background-load", "100000"], "--background-load 100000: at most"),
    (["--repeats", "0"], "--repeats must be >= 1, got 0"), (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["--profile-model", "resnet18", "--profile-repeats", "0"], "--profile-repeats must be >= 1, got 0"),
])
def test_bad_options_are_refused_before_measuring(tmp_path, capsys, bad, message):
    """One line naming the option, the value and what is accepted; exit 2; nothing written."""
    out = tmp_path / "out"
    assert main(["bench", *QUICK_FWD, "--out", str(out), *bad]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()


def test_devices_cuda_without_cuda_names_the_option(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["bench", *QUICK_FWD, "--devices", "cuda", "--out", str(tmp_path / "out")]) == 2
    assert "--devices cuda: torch sees no CUDA device" in capsys.readouterr().err


def test_bad_routing_variable_is_refused_before_measuring(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPARK_SPARSE_ROUTING", "bogus")
    assert main(["bench", *QUICK_FWD, "--out", str(tmp_path / "out")]) == 2
    assert "$SPARK_SPARSE_ROUTING: unknown routing 'bogus'; choose one of measured, fixed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_readme_is_checked_before_measuring(tmp_path, capsys):
    out = str(tmp_path / "out")
    no_markers = tmp_path / "R.md"
    no_markers.write_text("# no block\n")
    with_markers = tmp_path / "M.md"
    with_markers.write_text(f"{readme.README_START}\n{readme.README_END}\n")
    for bad, message in ((["--readme", str(tmp_path / "missing.md")], "cannot read it"),
                         (["--readme", str(tmp_path)], "cannot read it"),
                         (["--readme", str(no_markers)], "has no generated block"),
                         (["--readme", str(with_markers), "--note", readme.README_END], "--note must not contain"),
                         (["--readme", str(with_markers), "--profile-only", "--profile-model", "resnet18"],
                          "--readme has no effect with --profile-only")):
        assert main(["bench", *QUICK_FWD, "--out", out, *bad]) == 2, bad
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_outputs_are_checked_after_the_options_and_cover_the_plots(tmp_path, capsys):
    from spark_sparse.benchmarks.report import plot_names
    from spark_sparse.commands.bench import build_config
    (tmp_path / "results.json").write_text("{}")
    assert main(["bench", *QUICK_FWD, "--out", str(tmp_path), "--batch", "-1"]) == 2
    assert "--batch must be >= 1" in capsys.readouterr().err  # the option first, then the files
    mine = tmp_path / "plots"
    mine.mkdir()
    (mine / "speedup.png").write_text("the user's own")
    assert main(["bench", "--quick", "--models", "resnet18", "--out", str(mine)]) == 2
    assert "speedup.png exists; pass --force" in capsys.readouterr().err
    assert (mine / "speedup.png").read_text() == "the user's own"
    # --quick profiles the first of --models, as without --quick; its plot is among the files checked
    cfg = build_config(build_parser().parse_args(["bench", "--quick", "--models", "convnext_atto"]))
    assert cfg.profile_model == "" and plot_names(cfg) == ["speedup.png", "step_phases.png",
                                                           "profile_convnext_atto.png"]


def test_render_refuses_damaged_documents_and_measuring_options(tmp_path, capsys):
    rec = _record({"sparse[auto]": [1.0], "sparse[torch]": [1.0], "masked-dense": [2.0], "dense": [1.0]})
    for name, damage in (("env", lambda d: d.update(environment={})),
                         ("median", lambda d: d["results"][0]["time_ms"]["fwd"]["dense"].pop("median"))):
        doc = json.loads(json.dumps(_doc([rec])))
        damage(doc)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc))
        assert main(["bench", "--render", str(path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "not a readable results.json" in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "out").exists()  # nothing written: a rerun needs no --force
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_doc([rec])))
    assert main(["bench", "--render", str(good), "--batch", "-5", "--size", "63", "--devices", "cuda",
                 "--out", str(tmp_path / "out")]) == 2
    assert "--render measures nothing: --batch, --size, --devices would be ignored" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_list_options_are_measured_once_each():
    from spark_sparse.commands.bench import build_config
    args = build_parser().parse_args(["bench", "--models", "resnet18", "resnet18", "--mask-ratios", "0.5", "0.5",
                                      "--modes", "fwd", "fwd", "--background-load", "0", "0", "--batch", "2", "2"])
    cfg = build_config(args)
    assert (cfg.models, cfg.mask_ratios, cfg.modes, cfg.background_load, cfg.batches) == \
           (["resnet18"], [0.5], ["fwd"], [0], [2])
    # a preset's peak-memory modes outside --modes are not the user's: not refused
    assert build_config(build_parser().parse_args(["bench", "--quick", "--modes", "fwd"])).modes == ["fwd"]
    step = build_config(build_parser().parse_args(["bench", "--modes", "step", "--step-dtypes", "bf16",
                                                   "--step-contenders", "sparse[auto] bf16", "spark-published"]))
    assert step.step_contenders == ["sparse[auto] bf16", "spark-published"]


def test_a_run_that_measured_nothing_exits_1_with_the_reasons(tmp_path, capsys):
    path = tmp_path / "README.md"
    path.write_text(f"{readme.README_START}\nold table\n{readme.README_END}\n")
    out = tmp_path / "out"
    assert main(["bench", "--quick", "--models", "mobilenetv3_small_050", "--profile-model", "none", "--no-memory",
                 "--no-progress", "--readme", str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("spark-sparse bench: nothing was measured: every case was skipped (mobilenetv3_small_050")
    assert "not sparsifiable yet" in err and "left as it was" in err
    assert json.loads((out / "results.json").read_text())["skipped"][0]["model"] == "mobilenetv3_small_050"
    assert "old table" in path.read_text()


def test_progress_shows_no_empty_sweep_and_announces_the_memory_child(capsys, monkeypatch):
    from spark_sparse.benchmarks import runner
    from spark_sparse.benchmarks.config import BenchConfig
    runner.run(BenchConfig.quick_config(profile_only=True, profile_model=None, memory=False), progress=True)
    assert "bench:" not in capsys.readouterr().err  # --profile-only: no "bench: 0measure" bar

    def child(specs, progress=False):
        raise RuntimeError("no child here")
    monkeypatch.setattr(runner, "measure_cpu_in_child", child)
    runner.cpu_memory([({"model": "resnet18", "batch": 2}, [{}])])
    err = capsys.readouterr().err
    assert "measuring peak memory in a child process: 1 case (resnet18 b2)" in err


def test_a_contender_that_runs_like_another_is_measured_once():
    from spark_sparse.benchmarks.runner import find_aliases, plan_summary
    plans = {"sparse[torch]": ["3x3 torch", "1x1 matmul"], "sparse[spconv]": ["3x3 spconv", "1x1 matmul"],
             "sparse[auto]": ["3x3 torch", "1x1 matmul"]}
    assert find_aliases(plans) == {"sparse[auto]": "sparse[torch]"}
    assert find_aliases(dict(plans, **{"sparse[auto]": ["3x3 spconv", "1x1 torch"]})) == {}
    assert plan_summary(["3x3 torch", "7x7/2 torch", "1x1/2 matmul"]) == {"torch": 2, "matmul": 1}


def test_which_contenders_each_mode_runs():
    from spark_sparse.benchmarks.runner import measured_in
    contenders = {"sparse[torch]": {"kind": "sparse", "backend": "torch"},
                  "sparse[auto]": {"kind": "sparse", "backend": "auto"},
                  "masked-dense": {"kind": "masked_dense", "backend": None},
                  "dense": {"kind": "dense", "backend": None}}
    alias = {"sparse[auto]": "sparse[torch]"}
    assert measured_in("fwd", contenders, alias, ["auto"]) == (["sparse[torch]", "masked-dense", "dense"], {})
    run, left_out = measured_in("step", contenders, {}, ["auto"])
    assert run == ["sparse[auto]", "masked-dense", "dense"] and list(left_out) == ["sparse[torch]"]
    # 'auto' runs as its alias target, which is then measured (under both names), not left out
    assert measured_in("step", contenders, alias, ["auto"]) == (["sparse[torch]", "masked-dense", "dense"], {})


def test_profile_times_every_depthwise_implementation_side_by_side():
    from spark_sparse.benchmarks.profile_layers import profile_model
    prof = profile_model("convnext_atto", batch=2, image_size=(64, 64), ratio=0.5, warmup=0, repeats=1,
                         progress=False, modes=("fwd",))
    depthwise = [layer for layer in prof["layers"] if " dw " in layer["how"]]
    assert len(depthwise) == 12  # convnext_atto: 2 + 2 + 6 + 2 blocks
    for layer in depthwise:
        assert {"sparse[dw table]", "sparse[dw tiles]", "sparse[dw dense]"} <= set(layer["time_ms"]["fwd"]), layer
        assert "sparse[dw triton]" not in layer["time_ms"]["fwd"]  # timed on CUDA only
    table = markdown.backend_table(prof)
    assert "fwd dw tiles ms" in table and "| stages.0.blocks.0.conv_dw | 4 | 40 | 7x7 dw " in table


def test_transposed_conv_variants_are_the_same_function():
    """Four phase convs and the sub-pixel conv equal ConvTranspose2d(k4, s2, p1) in fp64."""
    from spark_sparse.benchmarks.head_variants import UPSAMPLERS
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 5, 7, generator=g, dtype=torch.float64)
    w = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    ref = torch.nn.functional.conv_transpose2d(x, w, b, stride=2, padding=1)
    for name, fn in UPSAMPLERS.items():
        assert (fn(x, w, b) - ref).abs().max() <= 1e-12, name


def test_roofline_floor_and_ceiling():
    """The floor is 3 × forward MACs at the peak; the table divides the published time by it."""
    from spark_sparse.benchmarks.markdown import roofline_rows
    from spark_sparse.benchmarks.roofline import conv_peak_gmacs, floor_ms
    assert floor_ms(10 ** 9, 100.0) == pytest.approx(30.0)
    assert floor_ms(None, 100.0) is None and floor_ms(10 ** 9, None) is None
    rec = {"dtype": "fp32", "conv_peak_gmacs": {"fp32": 100.0, "bf16": 200.0},
           "macs": {"step": {"sparse": 2 * 10 ** 9, "masked-dense": 4 * 10 ** 9}},
           "contenders": {"s": {"kind": "sparse"}, "s bf16": {"kind": "sparse", "amp": "bf16"},
                          "spark-published": {"kind": "published", "amp": "fp32"}}}
    times = {"s": {"median": 120.0}, "s bf16": {"median": 60.0}, "spark-published": {"median": 240.0}}
    rows = {r[0]: r[1:] for r in roofline_rows(rec, [], times, 240.0)}
    assert rows["s"] == ["fp32", "100", "2.0", "60", "120", "50 %", "4.00×"]
    assert rows["s bf16"] == ["bf16", "200", "2.0", "30", "60", "50 %", "8.00×"]
    assert rows["spark-published"][3:] == ["120", "240", "50 %", "2.00×"]
    assert conv_peak_gmacs(torch.device("cpu"), repeats=1) > 0


def test_the_memory_child_shows_what_it_measures_as_it_goes(capfd):
    from spark_sparse.benchmarks import runner
    from spark_sparse.benchmarks.config import BenchConfig
    from spark_sparse.benchmarks.memory import cpu_peak_rss_supported
    if cpu_peak_rss_supported() is not None:
        pytest.skip(cpu_peak_rss_supported())
    doc = runner.run(BenchConfig.quick_config(models=["resnet18"], modes=["fwd"], memory_modes=["fwd"],
                                              profile_model=None, backends=["torch"]), progress=True)
    err = capfd.readouterr().err
    assert "peak memory: resnet18 b2 mask ratio 0.5 fwd sparse[torch]" in err  # printed by the child itself
    assert doc["results"][0]["peak_memory_bytes"]["fwd"]["sparse[torch]"] > 0


def test_first_use_renders_its_results_and_never_overwrites_them(tmp_path):
    from spark_sparse.benchmarks import first_use

    def run(steps, tuned, cached, seconds=0.0):
        return {"steps": steps, "tuning": {"tuned": tuned, "cached": cached, "seconds": seconds, "pending": 0}}

    doc = {"args": {"model": "resnet50", "batch": 16, "size": 224, "mask_ratio": 0.6, "steps": 2, "pairs": 2},
           "pairs": [{"cold": run([2.0, 1.0], 24, 0, 0.9), "warm": run([1.5, 1.0], 0, 24), "extra_s": 0.5},
                     {"cold": run([1.8, 1.2], 24, 0, 0.7), "warm": run([1.6, 1.0], 0, 24), "extra_s": 0.4}],
           "extra_s": 0.45, "warm_step_s": 1.0}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    assert first_use.main(["--render", str(tmp_path / "results.json")]) == 0
    text = (tmp_path / "results.md").read_text()
    assert "first-use tuning added **0.45 s** (median of 2 cold/warm pairs)" in text
    assert "+0.35, +0.10; their sum 0.45 s" in text and "0.90, 0.70 s" in text
    with pytest.raises(SystemExit) as refused:  # before anything is measured
        first_use.main(["--out", str(tmp_path)])
    assert refused.value.code == 2


def test_bench_tunes_every_dtype_it_times_before_timing(fresh_cache):
    """With measured routing the CPU samples a layer's first calls: bench settles every sparse
    contender in its own dtype and in each step variant's autocast dtype, so no timed round samples."""
    from spark_sparse import routing
    from spark_sparse.benchmarks.case import Case
    from spark_sparse.benchmarks.runner import tune_all

    case = Case("resnet18", "cpu", "fp32", 2, (64, 64), ["auto"], decoder_width=32, step_dtypes=("bf16",),
                published=False)
    images, visible = case.inputs(0.5)
    with routing.routing_mode("measured"):
        cost = tune_all(case, images, visible, steps=True)
        assert routing.tuning_stats()["pending"] == 0 and cost["calls"] >= 4
        keys = [k for env in json.loads(fresh_cache.read_text())["environments"].values() for k in env]
        assert any(" float32 " in k for k in keys) and any(" bfloat16 " in k for k in keys)
        before = routing.tuning_stats()
        tune_all(case, images, visible, steps=True)  # settled: one call per dtype, nothing tuned
        assert routing.tuning_stats()["tuned"] == before["tuned"]
