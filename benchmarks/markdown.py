"""The Markdown tables of a results document (results.md and the README's headline block).

Encoder-only and whole-step figures are kept apart: the dense decoder is part of every SparK step
and is never hidden.
"""
from __future__ import annotations

import math
import os
from typing import Iterable, List, Optional

from .ratios import contention, group_results, headline_sparse, sparse_names
from .roofline import floor_ms

MIB = 2 ** 20


def _fmt(value: Optional[float], spec: str = ".2f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:{spec}}{suffix}"


def _table(header: List[str], rows: Iterable[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _speed(rec: dict, mode: str) -> str:
    """'vs masked-dense / vs dense' speed-ups of the headline sparse contender in ``mode``."""
    s = headline_sparse(rec)
    if mode in rec.get("unavailable", {}) and s in rec["unavailable"][mode]:
        return "n/a"
    if mode not in rec.get("time_ms", {}):
        return "–"
    per = rec.get("speedup", {}).get(mode, {}).get(s, {})
    return f"{_fmt(per.get('vs_masked_dense'), '.2f', '×')} / {_fmt(per.get('vs_dense'), '.2f', '×')}"


def headline_table(doc: dict) -> str:
    """One row per result: speed-ups of the headline sparse contender next to the FLOP ideal.

    Each speed-up cell is 'vs masked-dense / vs plain dense'; encoder and whole step apart.
    """
    header = ["model", "device", "dtype", "batch", "mask ratio", "visible", "ideal 1/vis", "encoder MAC ratio",
              "encoder fwd", "encoder fwd+bwd", "whole step", "step MAC ratio",
              "peak mem fwd+bwd (masked-dense/sparse)"]
    rows = []
    for rec in doc["results"]:
        mem = rec.get("memory_ratio", {}).get("fwd_bwd", {}).get(headline_sparse(rec), {}).get("vs_masked_dense")
        rows.append([rec["model"], rec["device"], rec["dtype"], str(rec["batch"]), f"{rec['mask_ratio']:.2f}",
                     f"{rec['visible_patches']}/{rec['total_patches']}", _fmt(rec["ideal_ratio"], ".2f", "×"),
                     _fmt(rec.get("mac_ratio", {}).get("encoder"), ".2f", "×"),
                     _speed(rec, "fwd"), _speed(rec, "fwd_bwd"), _speed(rec, "step"),
                     _fmt(rec.get("mac_ratio", {}).get("step"), ".2f", "×") if rec["macs"].get("step") else "n/a",
                     _fmt(mem, ".2f", "×")])
    return _table(header, rows)


def times_tables(doc: dict) -> str:
    """Median milliseconds of every contender, per model, mode and mask ratio."""
    parts = []
    for (model, device, dtype, batch, size, load), recs in group_results(doc["results"]).items():
        names = list(recs[0]["contenders"])
        fmts = {n: recs[0]["contenders"][n]["memory_format"] for n in names}
        aliases = recs[0].get("aliases", {})
        header = ["mode", "mask ratio"] + [f"{n} ({fmts[n]})" if fmts[n] != "sites x channels" else
                                           (f"{n} (= {aliases[n]})" if n in aliases else n) for n in names]
        rows = []
        for mode in doc["config"]["modes"]:
            for rec in recs:
                per = rec["time_ms"].get(mode, {})
                una = rec.get("unavailable", {}).get(mode, {})
                err = rec.get("errors", {}).get(mode, {})
                rows.append([mode, f"{rec['mask_ratio']:.2f}"] + [
                    _fmt(per[n]["median"], ".1f") if n in per else ("error" if n in err else
                                                                    ("n/a" if n in una else "–")) for n in names])
        convs = "; ".join(f"{n}: " + ", ".join(f"{k} {v}" for k, v in c["convs"].items())
                          for n, c in recs[0]["contenders"].items() if c.get("convs"))
        note = (f"\n\nConvs by backend ({convs}). " if convs else "\n\n") + "".join(
            f"{a} ran every conv as {t} does, so it was measured once and is reported under both names. "
            for a, t in aliases.items())
        parts.append(f"### {model}, {device} {dtype}, batch {batch}, {size[0]}×{size[1]}{_load(load)}: "
                     f"median ms{note}\n\n"
                     + _table(header, rows))
    return "\n\n".join(parts)


def _load(load: int) -> str:
    return f", {load} busy processes beside" if load else ""


def step_tables(doc: dict) -> str:
    """The whole step: each contender against SparK as published, where its time goes (phases),
    what holds its memory, and what checkpointing saves and costs."""
    speed, phases, memory, ckpt, roof = [], [], [], [], []
    names = list(dict.fromkeys(n for rec in doc["results"] for n in rec.get("step_phases_ms", {})))
    phase_names = list(dict.fromkeys(p for rec in doc["results"] for per in rec.get("step_phases_ms", {}).values()
                                     for p in per))
    for rec in doc["results"]:
        times = rec["time_ms"].get("step", {})
        if not times:
            continue
        where = [rec["model"], rec["dtype"], str(rec["batch"]), f"{rec['mask_ratio']:.2f}",
                 str(rec.get("background_load", 0))]
        published = times.get("spark-published", {}).get("median")
        for name in sparse_names(rec):
            if name not in times:
                continue
            per = rec["speedup"].get("step", {}).get(name, {})
            speed.append(where + [name, rec["contenders"][name].get("amp", rec["dtype"]),
                                  _fmt(times[name]["median"], ".0f"), _fmt(published, ".0f"),
                                  _fmt(per.get("vs_published"), ".2f", "×"),
                                  _fmt(per.get("vs_masked_dense"), ".2f", "×")])
        roof += roofline_rows(rec, where, times, published)
        for name in names:
            split = rec.get("step_phases_ms", {}).get(name)
            if split:
                phases.append(where + [name] + [_fmt(split.get(p), ".0f") for p in phase_names]
                              + [_fmt(times[name]["median"], ".0f")])
            mem = rec.get("step_memory_bytes", {}).get(name)
            if mem:
                peak = rec.get("peak_memory_bytes", {}).get("step", {})
                peak = peak.get(name) if isinstance(peak, dict) else None
                memory.append(where + [name] + [_fmt(mem[k] / MIB, ".0f") for k in
                                                ("encoder_activations", "encoder_weights_grads", "head_activations",
                                                 "head_weights_grads", "optimizer_state")]
                              + [_fmt(peak / MIB if peak else None, ".0f")])
        for name, cost in rec.get("checkpointing", {}).items():
            ckpt.append(where + [name, cost.get("recomputed", "decoder"), cost.get("against", "–"),
                                 _fmt(100 * cost["peak_memory_cut"] if "peak_memory_cut" in cost else None,
                                      ".0f", " %"), _fmt(100 * cost["time_cost"], "+.0f", " %")])
    if not speed:
        return ""
    head = ["model", "dtype", "batch", "mask ratio", "busy processes"]
    out = ["### Against SparK as published (masked-dense encoder, NCHW head, fp32, eager)", "",
           "Speed-up = paired median of (published step time / this step's time), in one run.", "",
           _table(head + ["contender", "autocast", "step ms", "published ms", "× vs published", "× vs masked-dense"],
                  speed), "",
           "### Where the step's time goes (median ms per phase)", "",
           "Phases split by the model's own boundaries; the backward is split with gradient hooks. "
           "The benchmark's batch is already in memory, so there is no data wait here (the trainer logs it).", "",
           _table(head + ["contender"] + phase_names + ["step (wall)"], phases), ""]
    if roof:
        out += ["### What this device allows (the step's MACs at its dense-convolution peak)", "",
                "Peak = the fastest dense 3×3 convolution measured on this device in the same run (forward, "
                "channels-last, best of 5); floor = 3 × the step's forward MACs at that rate (the backward does "
                "twice the forward's MACs). No step can run faster than its floor, so published ms / floor is "
                "the most any contender could gain over SparK as published here; % of peak = floor / measured.", "",
                _table(head + ["contender", "autocast", "peak GMAC/s", "forward GMACs", "floor ms", "step ms",
                               "% of peak", "ceiling × vs published"], roof), ""]
    if memory:
        out += ["### What holds the step's memory (MiB)", "",
                "Activations kept for the backward pass per part (counted when saved; each storage once), "
                "parameters + gradients, optimizer state; beside the measured peak growth of the step. "
                "What a checkpointed contender recomputes keeps only its inputs, which autograd does not save "
                "(so they are not counted here): its activation columns are lower bounds, the measured peak "
                "is the whole of it.", "",
                _table(head + ["contender", "encoder activations", "encoder weights+grads", "head activations",
                               "head weights+grads", "optimizer state", "measured peak growth"], memory), ""]
    if ckpt:
        out += ["### Checkpointing (recompute blocks in the backward pass)", "",
                "Each checkpointed contender against the same step without checkpointing, in the same run.", "",
                _table(head + ["contender", "recomputed", "against", "peak step memory cut", "step time cost"],
                       ckpt), ""]
    return "\n".join(out)


def head_variants_tables(hv: dict) -> str:
    """The dense head's exact alternatives: fwd+bwd ms beside the fp32 error against fp64."""
    out = [f"Batch {hv['batch']}, {hv['image_size'][0]}×{hv['image_size'][1]}, decoder width {hv['width']}, "
           f"fwd+bwd, median of {hv['repeats']} interleaved; error = max |fp32 − fp64| / max |fp64| of the output "
           f"and of the input gradient.", ""]
    rows = [[r["variant"], _fmt(r.get("time_ms"), ".0f"), _fmt(r["error"], ".1e"), _fmt(r["grad_error"], ".1e"),
             _fmt(r.get("compile_s"), ".0f", " s") if "compile_s" in r else "–"] for r in hv["decoder"]]
    out += ["#### The whole decoder", "", _table(["variant", "ms", "output error", "input-grad error", "compile"],
                                                 rows), ""]
    for fmt, layers in hv["upsampling"].items():
        names = list(layers[0]["time_ms"]) if layers else []
        rows = [[l["layer"], str(l["channels"]), "×".join(map(str, l["input_hw"]))]
                + [f"{_fmt(l['time_ms'].get(n), '.1f')} "
                   f"({_fmt(l['error'][n], '.1e')} / {_fmt(l['grad_error'][n], '.1e')})"
                   for n in names] for l in layers]
        out += [f"#### ConvTranspose2d(k4, s2, p1), {fmt}: ms (output error / input-grad error)", "",
                _table(["layer", "channels", "input"] + names, rows), ""]
    return "\n".join(out)


def _macs_key(kind: Optional[str]) -> str:
    """The key of a contender's MAC count in a record's ``macs`` (SparK as published: masked-dense)."""
    return {"published": "masked-dense", "masked_dense": "masked-dense", "dense": "dense"}.get(kind or "", "sparse")


def roofline_rows(rec: dict, where: List[str], times: dict, published: Optional[float]) -> List[List[str]]:
    peaks = rec.get("conv_peak_gmacs") or {}
    step_macs = (rec.get("macs") or {}).get("step") or {}
    rows = []
    for name, t in times.items():
        info = rec["contenders"].get(name, {})
        amp = info.get("amp", rec["dtype"])
        macs = step_macs.get(_macs_key(info.get("kind")))
        floor = floor_ms(macs, peaks.get(amp))
        if floor is None:
            continue
        rows.append(where + [name, amp, _fmt(peaks.get(amp), ".0f"), _fmt(macs / 1e9, ".1f"), _fmt(floor, ".0f"),
                             _fmt(t["median"], ".0f"), _fmt(100 * floor / t["median"], ".0f", " %"),
                             _fmt(published / floor if published else None, ".2f", "×")])
    return rows


def efficiency_table(doc: dict) -> str:
    """Encoder forward+backward: each contender's MACs at the device's conv peak against its time.

    The sparse encoder's speed-up over a dense one is its MAC ratio times the ratio of these
    percentages, so this says whether a gap to the FLOP ideal is in the MACs or in how fast they run."""
    rows = []
    for rec in doc["results"]:
        peak = (rec.get("conv_peak_gmacs") or {}).get(rec["dtype"])
        times = rec["time_ms"].get("fwd_bwd", {})
        macs = (rec.get("macs") or {}).get("encoder") or {}
        if not peak or not times:
            continue
        for name, t in times.items():
            count = macs.get(_macs_key(rec["contenders"].get(name, {}).get("kind")))
            floor = floor_ms(count, peak)
            if floor is None:
                continue
            rows.append([rec["model"], rec["dtype"], str(rec["batch"]), f"{rec['mask_ratio']:.2f}",
                         str(rec.get("background_load", 0)), name, _fmt(count / 1e9, ".1f"), _fmt(t["median"], ".0f"),
                         _fmt(floor, ".0f"), _fmt(100 * floor / t["median"], ".0f", " %")])
    if not rows:
        return ""
    return ("Encoder forward+backward: 3 × its forward MACs at the dense 3×3 convolution peak measured in the "
            "same run (floor) against its median time. The sparse encoder's speed-up over a dense contender is "
            "its MAC ratio times the ratio of their percentages.\n\n"
            + _table(["model", "dtype", "batch", "mask ratio", "busy processes", "contender", "forward GMACs",
                      "ms", "floor ms", "% of peak"], rows))


def contention_table(doc: dict) -> str:
    rows = [[c["model"], c["dtype"], str(c["batch"]), f"{c['mask_ratio']:.2f}", str(c["load"]),
             _fmt(c["quiet"], ".2f", "×"), _fmt(c["loaded"], ".2f", "×"), _fmt(100 * c["kept"], ".0f", " %")]
            for c in contention(doc["results"])]
    if not rows:
        return ""
    return ("Encoder forward+backward speed-up of the sparse encoder over the plain dense model, measured "
            "quiet and with busy processes beside it (`--background-load`).\n\n"
            + _table(["model", "dtype", "batch", "mask ratio", "busy processes", "quiet", "loaded", "kept"], rows))


def memory_tables(doc: dict) -> str:
    parts = []
    for (model, device, dtype, batch, size, load), recs in group_results(doc["results"]).items():
        mem0 = recs[0].get("peak_memory_bytes", {})
        if not mem0 or "unavailable" in mem0:
            parts.append(f"### {model}, {device} {dtype}, batch {batch}{_load(load)}: peak memory "
                         f"{mem0.get('unavailable', 'not measured')}")
            continue
        names = list(recs[0]["contenders"])
        rows = []
        for mode in doc["config"]["modes"]:
            for rec in recs:
                per = rec.get("peak_memory_bytes", {}).get(mode)
                if not per:
                    continue
                rows.append([mode, f"{rec['mask_ratio']:.2f}"] + [_fmt(per[n] / MIB, ".0f") if n in per else "–"
                                                                   for n in names])
        how = "max_memory_allocated growth" if device == "cuda" else "peak RSS growth of a child process"
        parts.append(f"### {model}, {device} {dtype}, batch {batch}{_load(load)}: peak memory, MiB ({how})\n\n"
                     + _table(["mode", "mask ratio"] + names, rows))
    return "\n\n".join(parts)


def macs_table(doc: dict) -> str:
    rows = []
    for rec in doc["results"]:
        m = rec["macs"]
        step = m.get("step") or {}
        rows.append([rec["model"], str(rec["batch"]), f"{rec['mask_ratio']:.2f}",
                     _fmt(m["encoder"]["sparse"] / 1e9, ".2f"), _fmt(m["encoder"]["masked-dense"] / 1e9, ".2f"),
                     _fmt(m["encoder"]["dense"] / 1e9, ".2f"),
                     _fmt(m["head"] / 1e9, ".2f") if m.get("head") is not None else "n/a",
                     _fmt(step["sparse"] / 1e9, ".2f") if step else "n/a",
                     _fmt(step["masked-dense"] / 1e9, ".2f") if step else "n/a",
                     _fmt(rec["ideal_ratio"], ".2f", "×")])
    return _table(["model", "batch", "mask ratio", "encoder GMACs sparse", "masked-dense", "dense",
                   "head (densify+decoder)", "step sparse", "step masked-dense", "ideal"], rows)


def environment_lines(doc: dict) -> str:
    env = doc["environment"]
    v = env["versions"]
    cpu = env["cpu"]
    lines = [f"- date (UTC): {env['date_utc']}; commit {env.get('git_commit') or 'unknown'}",
             f"- torch {v['torch']}, timm {v['timm']}, spconv {v['spconv'] or 'not installed'}, python {env['python']}",
             f"- CPU: {cpu['model']}, {cpu['usable_cores']} usable cores, torch threads {cpu['torch_threads']} "
             f"(interop {cpu['torch_interop_threads']}); load average at start {env.get('load_average_start')}, "
             f"at end {env.get('load_average_end')}"
             + (f"; malloc: {env['malloc']}" if env.get("malloc") else "")
             + (f"; OpenMP wait: {cpu['openmp_wait']}" if cpu.get("openmp_wait") else "")]
    mem = env.get("memory_start")
    if mem:
        lines.append(f"- memory at start: {mem['total_gib']} GiB, {mem['free_gib']} GiB free, "
                     f"{mem['page_cache_gib']} GiB page cache")
    if env.get("cuda"):
        c = env["cuda"]
        lines.append(f"- GPU: {c['name']} (sm {c['capability']}, {c['memory_gib']} GiB), CUDA {c['cuda']}, "
                     f"cuDNN {c['cudnn']}, TF32 matmul {c['tf32_matmul']} / cuDNN {c['tf32_cudnn']}")
    cfg = doc["config"]
    lines.append(f"- warm-up {cfg['warmup']}, repeats {cfg['repeats']} (interleaved, median); backends "
                 f"{', '.join(cfg['backends'])}; dense memory format {cfg['dense_format']}")
    if doc.get("note"):
        lines.append(f"- note: {doc['note']}")
    return "\n".join(lines)


def profile_table(profile: dict) -> str:
    rows = []
    for layer in profile["layers"]:
        t = layer["time_ms"]
        row = [layer["path"], layer["type"], layer["how"], f"{layer['sites']}/{layer['dense_sites']}"]
        for mode in profile["modes"]:
            per = t.get(mode, {})
            s, d, m = per.get("sparse"), per.get("dense"), per.get("masked-dense")
            row += [_fmt(s, ".2f"), _fmt(d, ".2f"), _fmt(m, ".2f"),
                    _fmt(d / s if s and d else None, ".2f", "×")]
        rows.append(row)
    header = ["layer", "type", "how", "input sites sparse/dense"]
    for mode in profile["modes"]:
        header += [f"{mode} sparse ms", f"{mode} dense ms", f"{mode} masked-dense ms", f"{mode} dense/sparse"]
    totals = []
    for mode in profile["modes"]:
        tot = profile["totals"][mode]
        totals.append(f"- {mode}: sum of layers sparse {_fmt(tot['sparse_layers'], '.1f')} ms, dense twins "
                      f"{_fmt(tot['dense_layers'], '.1f')} ms, masked-dense twins "
                      f"{_fmt(tot['masked_dense_layers'], '.1f')} ms; whole encoder sparse "
                      f"{_fmt(tot['sparse_whole'], '.1f')} ms (rest: index tables, residual adds, gathers, densify "
                      f"{_fmt(tot['sparse_rest'], '.1f')} ms), "
                      f"masked-dense {_fmt(tot['masked_dense_whole'], '.1f')} ms")
    for mode in profile["modes"]:
        tot = profile["totals"][mode]
        whole, rest = tot.get("sparse_whole"), tot.get("sparse_rest")
        share = _fmt(100 * rest / whole if whole and rest is not None else None, ".1f", " %")
        totals.append(f"- **time outside the layers, {mode}: {_fmt(rest, '.1f')} ms = {share} of the sparse "
                      "encoder** "
                      "(the encoder timed as a training step calls it — images and mask in, four maps out"
                      + (", backward" if mode == "fwd_bwd" else "") + " — minus the sum of its layers timed "
                      "one by one: index tables, tile gathers, residual adds, the densify; the layers timed "
                      "alone run on warm caches, so a small or negative figure means the rest is within noise)")
    return (f"### Per-layer profile: {profile['model']}, {profile['device']} {profile['dtype']}, batch "
            f"{profile['batch']}, {profile['image_size'][0]}×{profile['image_size'][1]}, mask ratio "
            f"{profile['mask_ratio']}, backend {profile['backend']}, dense twins {profile['dense_format']}, "
            f"median of {profile['repeats']}\n\n"
            "Each sparse layer on its real input against its dense twin (the same layer run densely on the "
            "masked input) and the masked-dense twin (the same plus SparK's re-masking / masked BN).\n\n"
            + "\n".join(totals) + "\n\n" + _table(header, rows))


def backend_table(profile: dict) -> str:
    """Every conv that runs through a backend, timed on each one: what ``auto``'s rule table rests on."""
    names = list(dict.fromkeys(k for layer in profile["layers"] for m in profile["modes"]
                               for k in layer["time_ms"].get(m, {}) if k.startswith("sparse[")))
    layers = [layer for layer in profile["layers"] if any(n in layer["time_ms"].get(m, {})
                                                          for n in names for m in profile["modes"])]
    if not layers:
        return ""
    header = ["layer", "stride", "channels", "auto runs"]
    for mode in profile["modes"]:
        header += [f"{mode} {n[7:-1]} ms" for n in names] + [f"{mode} dense ms"]
    rows = []
    for layer in layers:
        row = [layer["path"], str(layer["stride"]), str(layer["channels"]), layer["how"]]
        for mode in profile["modes"]:
            per = layer["time_ms"].get(mode, {})
            row += [_fmt(per.get(n), ".2f") for n in names] + [_fmt(per.get("dense"), ".2f")]
        rows.append(row + [(layer.get("route") or {}).get("reason", "")])
    header.append("why (the router's reason)")
    return ("#### Backends per conv layer\n\nEach conv that goes through a backend, on its real input, on every "
            "backend (median ms), and each depthwise conv on every implementation that runs here (`dw ...`), "
            "beside its dense twin: the measurements behind the router's fixed rule table "
            "(`spark_sparse/routing/rules.py`; with measured routing each machine times them itself).\n\n"
            + _table(header, rows))


def markdown(doc: dict, plots: Iterable[str] = ()) -> str:
    out = ["# spark_sparse benchmark: sparse vs masked-dense vs plain dense", "",
           f"Generated by `{doc.get('command') or 'spark-sparse bench'}` — do not edit by hand.", "",
           environment_lines(doc), ""]
    if doc.get("partial"):
        out += ["**Partial results: this run did not finish.**", ""]
    out += ["Speed-up = median over interleaved repeats of (contender time / sparse time); > 1 means the "
            "sparse encoder is faster. Headline cells read *vs masked-dense / vs plain dense*. "
            "*ideal* = 1 / visible fraction, the FLOP bound of the encoder. "
            "Encoder-only and whole-step figures are separate: the step includes the dense decoder, which "
            "no sparse encoder can speed up.", ""]
    if doc["results"]:
        s = headline_sparse(doc["results"][0])
        out += [f"## Headline ({s})", "", headline_table(doc), ""]
        for p in plots:
            out += [f"![{os.path.basename(p)}]({os.path.basename(p)})", ""]
        steps = step_tables(doc)
        if steps:
            out += ["## The whole step", "", steps, ""]
        busy = contention_table(doc)
        if busy:
            out += ["## Under contention", "", busy, ""]
        efficiency = efficiency_table(doc)
        if efficiency:
            out += ["## How much of this device's peak each encoder reaches", "", efficiency, ""]
        out += ["## Times of every contender", "", times_tables(doc), "",
                "## Peak memory", "", memory_tables(doc), "",
                "## Exact MACs (forward)", "", macs_table(doc), ""]
    if doc.get("head_variants"):
        out += ["## The dense head's exact alternatives", "", head_variants_tables(doc["head_variants"]), ""]
    if doc["skipped"]:
        out += ["## Skipped", ""] + [f"- {s['model']} ({s['device']} {s['dtype']}): {s['reason']}"
                                     for s in doc["skipped"]] + [""]
    for profile in doc["profiles"]:
        if "skipped" in profile:
            out += [f"Per-layer profile of {profile['model']} skipped: {profile['skipped']}", ""]
        else:
            out += [profile_table(profile), ""]
            backends = backend_table(profile)
            if backends:
                out += [backends, ""]
    return "\n".join(out)
