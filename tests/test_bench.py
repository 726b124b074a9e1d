"""The benchmark: the --quick run end to end (valid JSON, tables, plots), and the parts that can be
checked exactly — MAC accounting, ratios, tables, README block, interleaving, memory, step adapter.

Nothing here asserts a speed: timings on a shared CI machine prove nothing.
"""
import json
import shlex
import sys
import types

import pytest
import timm
import torch
from torch import nn

import spark_sparse as ss
from spark_sparse.benchmarks import report
from spark_sparse.benchmarks.contenders import Call, DenseEncoder, make_inputs
from spark_sparse.benchmarks.macs import dense_encoder_macs, encoder_macs, ideal_ratio, mac_ratio, step_macs
from spark_sparse.benchmarks.memory import cpu_peak_rss_supported
from spark_sparse.benchmarks.step import NOT_INSTALLED, make_step, spark_status
from spark_sparse.benchmarks.timing import paired_speedup, time_interleaved
from spark_sparse.cli import build_parser, main
from spark_sparse.flops import dense_macs, sparse_macs

PNG = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# --quick, end to end (the CI check of the whole tool)

def test_quick_run_writes_valid_results(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["bench", "--quick", "--no-progress", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    report.validate(doc)
    env = doc["environment"]
    assert env["versions"]["torch"] == torch.__version__ and env["cpu"]["torch_threads"] == torch.get_num_threads()

    recs = [r for r in doc["results"] if r["model"] == "resnet18"]
    assert [r["mask_ratio"] for r in recs] == [0.5]
    for rec in recs:
        names = set(rec["contenders"])
        assert {"sparse[auto]", "sparse[torch]", "masked-dense", "dense"} <= names
        for mode in ("fwd", "fwd_bwd"):
            assert set(rec["time_ms"][mode]) == names, rec.get("errors")
            assert len(rec["time_ms"][mode]["dense"]["repeats"]) == 1
            assert rec["speedup"][mode]["sparse[auto]"]["vs_masked_dense"] > 0
        # exact MACs: the sparse encoder's count is the dense count times the visible fraction
        macs = rec["macs"]["encoder"]
        assert macs["sparse"] * rec["total_patches"] == macs["masked-dense"] * rec["visible_patches"]
        assert rec["mac_ratio"]["encoder"] == pytest.approx(rec["ideal_ratio"])
        if spark_status() is None:  # the whole step, with the dense head counted once for everyone
            assert set(rec["time_ms"]["step"]) == {"sparse[auto]", "masked-dense", "dense"}, rec.get("errors")
            assert "--step-backends" in rec["unavailable"]["step"]["sparse[torch]"]
            head = rec["macs"]["head"]
            assert head > 0 and rec["macs"]["step"] == {k: v + head for k, v in macs.items()}
        else:  # without the SparK head the step says so, never faked
            assert rec["time_ms"]["step"] == {} and rec["macs"]["step"] is None
            assert set(rec["unavailable"]["step"].values()) == {spark_status()}
        if cpu_peak_rss_supported() is None:
            # measured in a child process: every fwd+bwd allocates at least the encoder's gradients (set
            # to None before each call). Were freed memory kept resident and reused (glibc does that
            # without the child's pinned mmap threshold), the growth would fall below that.
            grads = 4 * sum(p.numel() for n, p in timm.create_model("resnet18").named_parameters()
                            if not n.startswith("fc."))
            mem = rec["peak_memory_bytes"]["fwd_bwd"]
            assert set(mem) == names and all(v >= 0.95 * grads for v in mem.values()), (mem, grads)

    # a model that cannot be sparsified yet is reported, with the reason, not a crash
    ran = {r["model"] for r in doc["results"]}
    skipped = {s["model"]: s["reason"] for s in doc["skipped"]}
    assert ran | set(skipped) == {"resnet18", "convnext_atto"} and "resnet18" in ran
    assert all(reason for reason in skipped.values())

    # per-layer profile: every conv of resnet18, exact MACs that add up to the encoder's count
    profile = doc["profiles"][0]
    convs = [l for l in profile["layers"] if l["type"] == "SparseConv2d"]
    assert len(convs) == sum(isinstance(m, nn.Conv2d) for m in timm.create_model("resnet18").modules())
    model = timm.create_model("resnet18")
    _, visible = make_inputs(profile["batch"], tuple(profile["image_size"]), profile["mask_ratio"], 0, "cpu")
    assert sum(l["macs"]["sparse"] for l in convs) == sparse_macs(ss.sparsify(model), visible)["total"]
    assert all(l["time_ms"]["fwd"]["sparse"] > 0 and l["time_ms"]["fwd"]["dense"] > 0 for l in convs)
    # the convs auto decides (3×3 and the stem) are timed on every backend: auto's rule table rests on them
    decided = [l for l in convs if not l["how"].endswith("matmul")]
    assert decided and {b for b in profile["compare_backends"]} >= {"torch", "tiles"}
    for layer in decided:
        for b in profile["compare_backends"]:
            assert layer["time_ms"]["fwd_bwd"][f"sparse[{b}]"] > 0, (layer["path"], layer["errors"])
    assert all("sparse[torch]" not in l["time_ms"]["fwd"] for l in convs if l["how"].endswith("matmul"))

    md = (out / "results.md").read_text()
    assert "#### Backends per conv layer" in md and "| layer1.0.conv2 | 4 | 64 | 3x3 " in md
    assert "## Headline (sparse[auto])" in md and "| resnet18 | cpu | fp32 | 2 | 0.50 | 4/8 | 2.00× | 2.00× |" in md
    for png in ("speedup.png", "profile_resnet18.png"):
        assert (out / png).read_bytes()[:8] == PNG
    printed = capsys.readouterr().out
    assert "wrote" in printed and "whole SparK step" in printed

    # the tables (and plots) can be regenerated from the JSON alone
    again = tmp_path / "again"
    assert main(["bench", "--render", str(out / "results.json"), "--out", str(again), "--no-plots"]) == 0
    def text(markdown):  # what remains without the image links
        return [line for line in markdown.splitlines() if line and not line.startswith("![")]
    assert text((again / "results.md").read_text()) == text(md)


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
           "time_ms": time_ms, "unavailable": {"step": {n: NOT_INSTALLED for n in contenders}} if step_unavailable
           else {}, "errors": {}, "peak_memory_bytes": memory or {}}
    return report.add_ratios(rec)


def _doc(records):
    return {"schema": report.SCHEMA, "command": "spark-sparse bench --models resnet50", "note": "busy machine",
            "step_status": NOT_INSTALLED,
            "environment": {"date_utc": "2026-01-01T00:00:00+00:00", "git_commit": "abc", "python": "3.11",
                            "versions": {"torch": "2", "timm": "1", "spconv": None},
                            "cpu": {"model": "cpu", "usable_cores": 2, "torch_threads": 2, "torch_interop_threads": 2},
                            "cuda": None, "load_average_start": [1, 1, 1], "load_average_end": [2, 2, 2]},
            "config": {"modes": ["fwd", "step"], "warmup": 1, "repeats": 3, "backends": ["torch", "auto"],
                       "dense_format": "auto"},
            "results": records, "skipped": [{"model": "convnext_tiny", "device": "cpu", "dtype": "fp32",
                                             "reason": "not sparsifiable yet: X"}], "profiles": []}


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
    report.validate(doc)
    rows = report.headline_table(doc).splitlines()
    assert rows[2] == ("| resnet50 | cpu | fp32 | 4 | 0.60 | 80/196 | 2.45× | 2.45× | 3.00× / 2.00× | – | n/a | n/a "
                       "| – |")
    md = report.markdown(doc, ["out/speedup.png"])
    assert "Generated by `spark-sparse bench --models resnet50`" in md and "note: busy machine" in md
    assert "![speedup.png](speedup.png)" in md
    assert "| fwd | 0.60 | 10.0 | 5.0 | 20.0 | 10.0 |" in md  # medians of every contender
    assert "| step | 0.60 | n/a | n/a | n/a | n/a |" in md      # the step's absence is shown, not hidden
    assert "dense (channels_last)" in md
    assert "- convnext_tiny (cpu fp32): not sparsifiable yet: X" in md
    # JSON: no NaN or infinity, ever
    rec["speedup"]["fwd"]["sparse[auto]"]["vs_dense"] = float("nan")
    parsed = json.loads(report.to_json(doc))
    assert parsed["results"][0]["speedup"]["fwd"]["sparse[auto]"]["vs_dense"] is None


def test_validate_rejects_broken_documents():
    good = _doc([_record({"sparse[auto]": [1.0], "sparse[torch]": [1.0], "masked-dense": [2.0], "dense": [1.0]})])
    report.validate(good)
    for breaking in (lambda d: d.pop("environment"), lambda d: d.update(schema="other"),
                     lambda d: d["results"][0].pop("macs"),
                     lambda d: d["results"][0]["time_ms"]["fwd"]["dense"].update(median=0.0)):
        doc = json.loads(json.dumps(good))
        breaking(doc)
        with pytest.raises(ValueError):
            report.validate(doc)


def test_readme_block_is_regenerated(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nintro\n\n{report.README_START}\nold table\n{report.README_END}\n\nrest\n")
    rec = _record({"sparse[auto]": [1.0], "sparse[torch]": [1.0], "masked-dense": [2.0], "dense": [1.5]})
    report.update_readme(str(readme), _doc([rec]), str(tmp_path / "benchmarks" / "results"))
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\nintro\n") and text.endswith("\n\nrest\n")
    assert "[benchmarks/results/results.md](benchmarks/results/results.md)" in text
    assert report.headline_table(_doc([rec])) in text and "Note: busy machine" in text
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="no generated block"):
        report.update_readme(str(readme), _doc([rec]), str(tmp_path))


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

def test_step_is_unavailable_without_the_spark_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "spark_sparse.spark", None)  # as if the module did not exist
    assert spark_status() == NOT_INSTALLED == "unavailable (SparK head not installed)"


class _SparkLike(nn.Module):
    """A stand-in with the expected API (SparK(encoder); loss = model(images, visible)): a 1×1 conv
    head on the last stage, so the adapter's plumbing is tested without the real head."""

    def __init__(self, encoder, decoder_width=768):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Conv2d(encoder.channels[-1], 8, 1)

    def forward(self, images, visible):
        return self.head(self.encoder(images, visible)[-1]).square().mean()


def test_step_adapter_runs_a_spark_like_model(monkeypatch):
    from spark_sparse.benchmarks.runner import Case
    monkeypatch.setitem(sys.modules, "spark_sparse.spark", types.SimpleNamespace(SparK=_SparkLike))
    assert spark_status() is None
    case = Case("resnet18", "cpu", "fp32", 2, (64, 64), ["torch"])
    images, visible = case.inputs(0.5)
    dense = dense_encoder_macs(case.model, 2, (64, 64))
    assert case.head_macs(images, visible, dense) == 2 * 2 * 2 * 512 * 8  # the head alone, exactly
    calls, unavailable = case.calls("step", images, visible)
    assert unavailable == {} and set(calls) == {"sparse[torch]", "masked-dense", "dense"}
    before = case.contenders["sparse[torch]"].encoder.conv1.weight.detach().clone()
    times, errors = time_interleaved(calls, warmup=0, repeats=1, device=torch.device("cpu"))
    assert errors == {} and set(times) == set(calls)
    assert not torch.equal(before, case.contenders["sparse[torch]"].encoder.conv1.weight)  # the optimizer stepped
    step = make_step("sparse", "resnet18", ss.sparsify(timm.create_model("resnet18")))
    assert isinstance(step.model, _SparkLike) and isinstance(step.optimizer, torch.optim.AdamW)


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
    for bad, message in ((["--mask-ratios", "1.0"], "mask_ratio must be in [0, 1)"),
                         (["--size", "100"], "multiples of 32"), (["--batch", "0"], "batch sizes must be >= 1")):
        assert main(["bench", *bad, "--out", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err


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


# ---------------------------------------------------------------------------------------------
# CUDA paths of the benchmark (benchmarks/gpu.sh runs these; skipped without a GPU)

def needs_cuda(test):
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test))


@needs_cuda
def test_cuda_peak_growth_sees_an_allocation():
    from spark_sparse.benchmarks.memory import cuda_peak_growth
    dev = torch.device("cuda")
    assert cuda_peak_growth(Call(lambda: torch.ones(2 ** 24, device=dev).sum()), dev) >= 4 * 2 ** 24


@needs_cuda
def test_bench_quick_on_cuda(tmp_path):
    out = tmp_path / "res"
    assert main(["bench", "--quick", "--devices", "cuda", "--dtypes", "fp32", "bf16", "--no-progress",
                 "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    report.validate(doc)
    assert doc["environment"]["cuda"]["name"] == torch.cuda.get_device_name(0)
    recs = [r for r in doc["results"] if r["model"] == "resnet18"]
    assert {r["dtype"] for r in recs} == {"fp32", "bf16"}
    for rec in recs:
        assert rec["device"] == "cuda" and not rec["errors"], rec["errors"]
        mem = rec["peak_memory_bytes"]["fwd_bwd"]
        assert set(mem) == set(rec["contenders"]) and all(v > 0 for v in mem.values())


def test_profile_times_every_depthwise_implementation_side_by_side():
    from spark_sparse.benchmarks.profile_layers import profile_model
    prof = profile_model("convnext_atto", batch=2, image_size=(64, 64), ratio=0.5, warmup=0, repeats=1,
                         progress=False, modes=("fwd",))
    depthwise = [layer for layer in prof["layers"] if " dw " in layer["how"]]
    assert len(depthwise) == 12  # convnext_atto: 2 + 2 + 6 + 2 blocks
    for layer in depthwise:
        assert {"sparse[dw table]", "sparse[dw tiles]", "sparse[dw dense]"} <= set(layer["time_ms"]["fwd"]), layer
        assert "sparse[dw triton]" not in layer["time_ms"]["fwd"]  # timed on CUDA only
    table = report.backend_table(prof)
    assert "fwd dw tiles ms" in table and "| stages.0.blocks.0.conv_dw | 4 | 40 | 7x7 dw " in table
