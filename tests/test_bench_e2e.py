"""The benchmark's --quick run end to end: valid JSON, every contender and mode, the whole step with
SparK as published beside it and its phases, tables and plots, and the same tables again from the
JSON alone.

Nothing here asserts a speed: timings on a shared CI machine prove nothing.
"""
import json

import pytest
import timm
import torch
from torch import nn

import spark_sparse as ss
from spark_sparse.benchmarks import schema
from spark_sparse.benchmarks.contenders import make_inputs
from spark_sparse.benchmarks.memory import cpu_peak_rss_supported
from spark_sparse.cli import main
from spark_sparse.flops import sparse_macs
from spark_sparse.openmp import wait_policy
from spark_sparse.step_timer import PHASES

PNG = b"\x89PNG\r\n\x1a\n"


def test_quick_run_writes_valid_results(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["bench", "--quick", "--no-progress", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    schema.validate(doc)
    env = doc["environment"]
    assert env["versions"]["torch"] == torch.__version__ and env["cpu"]["torch_threads"] == torch.get_num_threads()
    assert env["cpu"]["openmp_wait"] == wait_policy()  # what torch's idle threads do, said in results.md too
    assert f"OpenMP wait: {wait_policy()}" in (out / "results.md").read_text()

    # both quick models are sparsifiable today: every one ran, none was skipped (the skip path has its
    # own test in test_bench_units.py)
    assert {r["model"] for r in doc["results"]} == {"resnet18", "convnext_atto"} and doc["skipped"] == []

    recs = [r for r in doc["results"] if r["model"] == "resnet18"]
    assert [r["mask_ratio"] for r in recs] == [0.5]
    for rec in recs:
        encoders = {n for n, c in rec["contenders"].items() if "modes" not in c}
        assert {"sparse[auto]", "sparse[torch]", "masked-dense", "dense"} <= encoders
        for mode in ("fwd", "fwd_bwd"):
            assert set(rec["time_ms"][mode]) == encoders, rec.get("errors")
            assert len(rec["time_ms"][mode]["dense"]["repeats"]) == 1
            assert rec["speedup"][mode]["sparse[auto]"]["vs_masked_dense"] > 0
        # exact MACs: the sparse encoder's count is the dense count times the visible fraction
        macs = rec["macs"]["encoder"]
        assert macs["sparse"] * rec["total_patches"] == macs["masked-dense"] * rec["visible_patches"]
        assert rec["mac_ratio"]["encoder"] == pytest.approx(rec["ideal_ratio"])
        # the whole step: the auto sparse contender, the dense ones and SparK as published, the head counted once
        assert set(rec["time_ms"]["step"]) == {"sparse[auto]", "masked-dense", "dense", "spark-published"}, \
            rec.get("errors")
        assert rec["contenders"]["spark-published"]["head_format"] == "contiguous"
        assert rec["speedup"]["step"]["sparse[auto]"]["vs_published"] > 0
        assert "--step-backends" in rec["unavailable"]["step"]["sparse[torch]"]
        assert rec["conv_peak_gmacs"]["fp32"] > 0  # the device's conv peak, for the floor of each step
        head = rec["macs"]["head"]
        assert head > 0 and rec["macs"]["step"] == {k: v + head for k, v in macs.items()}
        for name, split in rec["step_phases_ms"].items():  # every phase of the model's, timed
            assert set(split) == set(PHASES) - {"data"} and all(ms >= 0 for ms in split.values()), (name, split)
            assert sum(split.values()) <= rec["time_ms"]["step"][name]["repeats"][0] * 1.05
            mem = rec["step_memory_bytes"][name]
            assert mem["encoder_activations"] > 0 and mem["head_activations"] > 0 and mem["optimizer_state"] > 0
        if cpu_peak_rss_supported() is None:
            # measured in a child process: every fwd+bwd allocates at least the encoder's gradients (set
            # to None before each call). Were freed memory kept resident and reused (glibc does that
            # without the child's pinned mmap threshold), the growth would fall below that.
            grads = 4 * sum(p.numel() for n, p in timm.create_model("resnet18").named_parameters()
                            if not n.startswith("fc."))
            mem = rec["peak_memory_bytes"]["fwd_bwd"]
            assert set(mem) == encoders and all(v >= 0.95 * grads for v in mem.values()), (mem, grads)

    # per-layer profile: every conv of resnet18, exact MACs that add up to the encoder's count
    report = (out / "results.md").read_text()
    assert "What this device allows" in report and "How much of this device's peak" in report
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
    assert "### Against SparK as published" in md and "### Where the step's time goes" in md
    for png in ("speedup.png", "step_phases.png", "profile_resnet18.png"):
        assert (out / png).read_bytes()[:8] == PNG
    assert "wrote" in capsys.readouterr().out

    # the tables (and plots) can be regenerated from the JSON alone
    again = tmp_path / "again"
    assert main(["bench", "--render", str(out / "results.json"), "--out", str(again), "--no-plots"]) == 0
    def text(markdown):  # what remains without the image links
        return [line for line in markdown.splitlines() if line and not line.startswith("![")]
    assert text((again / "results.md").read_text()) == text(md)
