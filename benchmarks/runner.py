"""The sweep: every model × batch × device × dtype × background load × mask ratio, every contender,
every mode (one :class:`~.case.Case` per model, batch, device and dtype)."""
from __future__ import annotations

import gc
import sys
from collections import Counter
from typing import Callable, Dict, List, Optional, Tuple

import torch

from spark_sparse.allocator import keep_freed_memory, malloc_setting
from spark_sparse.precision import DTYPES
from spark_sparse.routing import get_routing, routing_mode

from .case import Case
from .config import BenchConfig, available_backends
from .contenders import choose_dense_format
from .environment import environment, load_average
from .load import background_load
from .macs import dense_encoder_macs, encoder_macs, ideal_ratio, step_macs
from .roofline import peaks_for
from .memory import cpu_peak_rss_supported, cuda_peak_growth, measure_cpu_in_child
from .ratios import add_ratios, headline_sparse
from .schema import SCHEMA
from .routes import routes, tune
from .timing import median_ms, settle_gc, time_interleaved


def find_aliases(plans: Dict[str, List[str]]) -> Dict[str, str]:
    """Sparse contenders that run every conv exactly as an earlier one (e.g. 'auto' choosing 'torch'
    for every layer on the CPU): measured once, reported under both names."""
    aliases: Dict[str, str] = {}
    names = list(plans)
    for i, name in enumerate(names):
        same = next((other for other in names[:i] if other not in aliases and plans[other] == plans[name]), None)
        if same is not None:
            aliases[name] = same
    return aliases


def measured_in(mode: str, contenders: Dict[str, dict], aliases: Dict[str, str],
                step_backends: Optional[List[str]],
                step_only: Optional[List[str]] = None) -> Tuple[List[str], Dict[str, str]]:
    """Which contenders ``mode`` runs, and the reason for each sparse one it leaves out.

    An alias runs as its target (measured once). The whole step is dominated by the dense decoder,
    so by default it runs only the 'auto' sparse contender (``step_backends``) beside the dense ones;
    ``step_only`` names the step contenders to run, when not all.
    """
    wanted = [n for n, c in contenders.items() if mode in c.get("modes", (mode,))]
    left_out: Dict[str, str] = {}
    if mode == "step" and step_backends is not None:
        for name, c in contenders.items():
            if c["kind"] == "sparse" and c["backend"] not in step_backends and name in wanted:
                wanted.remove(name)
                left_out[name] = "not measured in the whole step (--step-backends)"
    if mode == "step" and step_only is not None:
        for name in [n for n in wanted if n not in step_only]:
            wanted.remove(name)
            left_out[name] = "not measured in the whole step (--step-contenders)"
    run = list(dict.fromkeys(aliases.get(n, n) for n in wanted))
    return run, {n: why for n, why in left_out.items() if n not in run}


def plan_summary(plan: List[str]) -> Dict[str, int]:
    """How many convs ran on each backend ('matmul': pointwise and patchify convs, no backend needed)."""
    return dict(Counter(entry.rsplit(" ", 1)[-1] for entry in plan))


def skip_reason(error: Exception) -> str:
    from spark_sparse import UnsupportedLayerError
    if isinstance(error, UnsupportedLayerError):
        return f"not sparsifiable yet: {error}"
    return f"{type(error).__name__}: {error}"


def _progress(total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc="bench", unit="measure", disable=not enabled, file=sys.stderr, leave=False)


def run_case(case: Case, cfg: BenchConfig, bar, load: int = 0) -> List[dict]:
    """Every mask ratio and mode of one case, as result records (with their ratios); ``load`` is the
    number of busy processes running meanwhile (recorded)."""
    device = case.device
    images, visible = case.inputs(cfg.mask_ratios[0])
    format_mode = "fwd_bwd" if "fwd_bwd" in cfg.modes else "fwd"
    for c in case.contenders.values():
        choose_dense_format(c, images, visible, case.amp_dtype, format_mode, cfg.dense_format, cfg.format_trials)
    dense = dense_encoder_macs(case.model, case.batch, case.image_size)
    head = case.head_macs(images, visible, dense) if "step" in cfg.modes else None
    first_sparse = next(c for c in case.contenders.values() if c.kind == "sparse")
    tuning = tune_all(case, images, visible, "step" in cfg.modes)
    peaks = peaks_for(device, [case.dtype] + ([sc.amp for sc in case.step_contenders().values()]
                                              if "step" in cfg.modes else []))
    records = []
    for ratio in cfg.mask_ratios:
        images, visible = case.inputs(ratio)
        enc_macs = encoder_macs(first_sparse.encoder, visible, dense)
        plans = case.conv_plans(images, visible)
        aliases = find_aliases(plans)
        rec = {
            "model": case.model_name, "device": device.type, "dtype": case.dtype, "batch": case.batch,
            "image_size": list(case.image_size), "mask_ratio": ratio, "threads": torch.get_num_threads(),
            "visible_patches": int(visible.sum()), "total_patches": visible.numel(),
            "visible_fraction": int(visible.sum()) / visible.numel(), "ideal_ratio": ideal_ratio(visible),
            "background_load": load,
            "contenders": {n: {"kind": c.kind, "backend": c.backend, "memory_format": c.memory_format}
                           for n, c in case.contenders.items()},
            "macs": {"encoder": enc_macs, "head": head, "step": step_macs(enc_macs, head)},
            "time_ms": {}, "unavailable": {}, "errors": {}, "peak_memory_bytes": {}, "aliases": aliases,
        }
        rec["conv_peak_gmacs"] = peaks
        if "step" in cfg.modes:
            rec["contenders"].update({n: sc.describe() for n, sc in case.step_contenders().items()
                                      if n not in case.contenders})
            rec["step_phases_ms"], rec["step_memory_bytes"] = {}, {}
        for name, plan in plans.items():
            rec["contenders"][name]["convs"] = plan_summary(plan)
        headline = case.contenders.get("sparse[auto]", first_sparse)
        rec["routes"] = {"contender": headline.name,
                         "layers": routes(headline.encoder, images, visible, case.amp_dtype)}
        if tuning is not None:
            rec["tuning"], tuning = tuning, None  # once per case: later ratios reuse the decisions
        for mode in cfg.modes:
            run, left_out = measured_in(mode, rec["contenders"], aliases, cfg.step_backends_or_default(),
                                        cfg.step_contenders)
            calls, unavailable = case.calls(mode, images, visible, only=run)
            times, errors = time_interleaved(calls, warmup=cfg.warmup, repeats=cfg.repeats, device=device)
            for alias, target in aliases.items():  # measured once, reported under both names
                for got in (times, unavailable, errors):
                    if target in got and alias not in left_out:
                        got[alias] = got[target]
            unavailable.update(left_out)
            rec["time_ms"][mode] = {n: {"median": median_ms(t), "repeats": [s * 1e3 for s in t]}
                                    for n, t in times.items()}
            if unavailable:
                rec["unavailable"][mode] = unavailable
            if errors:
                rec["errors"][mode] = errors
            if mode in cfg.measured_memory_modes() and device.type == "cuda":
                mem = {n: cuda_peak_growth(calls[n], device) for n in calls if n in times}
                rec["peak_memory_bytes"][mode] = dict(mem, **{a: mem[t] for a, t in aliases.items()
                                                              if t in mem and a in times})
            if mode == "step":
                for name in times:
                    step = case.step(aliases.get(name, name))
                    rec["step_phases_ms"][name] = step.median_phases(cfg.repeats)
                    rec["step_memory_bytes"][name] = dict(step.memory)
            bar.update(1)
        add_ratios(rec)
        bar.write(summary_line(rec))
        records.append(rec)
    return records


def tune_all(case: Case, images: torch.Tensor, visible: torch.Tensor, steps: bool = False) -> dict:
    """Let every sparse contender's routing decide before anything is timed, in every compute dtype
    it is timed in (with ``steps``, the step variants' autocast dtypes too: decisions are kept per
    dtype, and on the CPU measured routing samples the first calls of each); what that cost, summed."""
    total: Dict[str, object] = {}
    for c in case.contenders.values():
        if c.kind != "sparse":
            continue
        dtypes = {case.amp_dtype}
        if steps:
            dtypes |= {DTYPES[sc.amp] for sc in case.step_contenders().values() if sc.contender is c}
        for dtype in sorted(dtypes, key=str):
            for key, value in tune(c.encoder, images, visible, dtype).items():
                total[key] = value if isinstance(value, str) else total.get(key, 0) + value
    return total


def cpu_memory(pending: List[Tuple[dict, List[dict]]], progress: bool = False) -> None:
    """Peak RSS of every CPU case (spec, its records), measured in one child process, into the records."""
    if not pending:
        return
    print(f"measuring peak memory in a child process: {len(pending)} case{'s' if len(pending) > 1 else ''} ("
          + ", ".join(f"{spec['model']} b{spec['batch']}" for spec, _ in pending)
          + "), every contender once more ...", file=sys.stderr, flush=True)
    try:
        reason = cpu_peak_rss_supported()
        if reason is not None:
            raise RuntimeError(reason)
        measured = measure_cpu_in_child([spec for spec, _ in pending], progress=progress)
    except Exception as e:
        print(f"warning: CPU memory not measured: {e}", file=sys.stderr)
        for _, records in pending:
            for rec in records:
                rec["peak_memory_bytes"] = {"unavailable": str(e)}
        return
    for (spec, records), result in zip(pending, measured):
        for rec in records:
            per_mode = result[str(rec["mask_ratio"])]
            for mode, per in per_mode.items():
                per.update({a: per[t] for a, t in rec["aliases"].items()
                            if t in per and a in rec["time_ms"].get(mode, {})})
            rec["peak_memory_bytes"] = {mode: {n: v for n, v in per.items() if isinstance(v, int)}
                                        for mode, per in per_mode.items()}
            errs = {mode: {n: v for n, v in per.items() if isinstance(v, str) and v.startswith("error")}
                    for mode, per in per_mode.items()}
            if any(errs.values()):
                rec["memory_errors"] = {m: e for m, e in errs.items() if e}
            add_ratios(rec)


def summary_line(rec: dict) -> str:
    s = headline_sparse(rec)
    parts = [f"{rec['model']} {rec['device']} {rec['dtype']} b{rec['batch']} r{rec['mask_ratio']:.2f}"]
    for mode, per in rec["time_ms"].items():
        if s in per and "masked-dense" in per:
            sp = rec["speedup"].get(mode, {}).get(s, {})
            parts.append(f"{mode} {s} {per[s]['median']:.0f} ms vs masked-dense {per['masked-dense']['median']:.0f} ms "
                         f"({sp.get('vs_masked_dense', float('nan')):.2f}x)")
    parts.append(f"ideal {rec['ideal_ratio']:.2f}x")
    return " | ".join(parts)


def run(cfg: BenchConfig, progress: bool = True, checkpoint: Optional[Callable[[dict], None]] = None) -> dict:
    """Run the whole benchmark described by ``cfg``; returns the results document (see schema.py).

    ``checkpoint(doc)`` is called after every case, so a long run that is stopped keeps what it
    measured so far.
    """
    cfg.validate()
    with routing_mode(cfg.routing):
        return _run(cfg, progress, checkpoint)


def _run(cfg: BenchConfig, progress: bool, checkpoint: Optional[Callable[[dict], None]]) -> dict:
    settle_gc()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32
    if cfg.keep_freed_memory:
        keep_freed_memory()
    doc = {"schema": SCHEMA, "command": cfg.command, "note": cfg.note,
           "environment": dict(environment(), malloc=malloc_setting()),
           "config": cfg.to_json(), "results": [], "skipped": [], "profiles": [], "routing": get_routing()}
    backends = cfg.backends or available_backends()
    doc["config"]["backends"] = backends
    jobs = [(d, t, m, b) for d in cfg.devices for t in cfg.dtypes_for(d) for m in cfg.models for b in cfg.batches]
    per_case = len(cfg.mask_ratios) * len(cfg.modes) * len(cfg.background_load)
    total = 0 if cfg.profile_only else len(jobs) * per_case
    bar = _progress(total, progress and total > 0)  # no empty bar when there is nothing to sweep
    skipped = set()
    pending_memory: List[Tuple[dict, List[dict]]] = []  # CPU cases: measured together in one child
    for device, dtype, model_name, batch in ([] if cfg.profile_only else jobs):
        if (device, dtype, model_name) in skipped:
            bar.update(per_case)
            continue
        try:
            case = Case(model_name, device, dtype, batch, cfg.image_size, backends, cfg.seed,
                        decoder_width=cfg.decoder_width, step_dtypes=tuple(cfg.step_dtypes),
                        decoder_checkpointing=cfg.decoder_checkpointing, published=cfg.published,
                        step_backends=cfg.step_backends_or_default(),
                        encoder_checkpointing=cfg.encoder_checkpointing)
        except Exception as e:
            skipped.add((device, dtype, model_name))
            reason = skip_reason(e)
            if not any(s["model"] == model_name and s["reason"] == reason for s in doc["skipped"]):
                doc["skipped"].append({"model": model_name, "device": device, "dtype": dtype, "reason": reason})
            bar.write(f"skipped {model_name}: {reason}")
            bar.update(per_case)
            continue
        measured = []
        for load in cfg.background_load:
            with background_load(load):
                records = run_case(case, cfg, bar, load)
            doc["results"].extend(records)
            measured.append(records)
        records = measured[0]  # memory: once, under the first load
        if cfg.measured_memory_modes() and device == "cpu":
            spec = case.spec(cfg.mask_ratios, cfg.measured_memory_modes(), torch.get_num_threads())
            spec["measure"] = {str(rec["mask_ratio"]): {m: measured_in(m, rec["contenders"], rec["aliases"],
                                                                       cfg.step_backends_or_default(),
                                                                       cfg.step_contenders)[0]
                                                        for m in spec["modes"]} for rec in records}
            pending_memory.append((spec, records))
        if checkpoint is not None:
            checkpoint(doc)
        del case
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    bar.close()
    cpu_memory(pending_memory, progress)
    if checkpoint is not None:
        checkpoint(doc)
    _profile(cfg, doc, backends, progress)
    if cfg.head_variants:
        from .head_variants import measure
        doc["head_variants"] = measure(cfg.profile_batch or cfg.batches[0], cfg.image_size, cfg.decoder_width,
                                       cfg.warmup, cfg.repeats, cfg.compile_head)
    doc["environment"]["load_average_end"] = load_average()
    return doc


def _profile(cfg: BenchConfig, doc: dict, backends: List[str], progress: bool) -> None:
    from .profile_layers import profile_model
    if cfg.profile_model is None:
        return
    candidates = [cfg.profile_model] if cfg.profile_model else [r["model"] for r in doc["results"]] or list(cfg.models)
    device = cfg.devices[0]
    dtype = cfg.dtypes_for(device)[0]
    batch = cfg.profile_batch or cfg.batches[0]
    for name in dict.fromkeys(candidates):
        fmt = next((r["contenders"]["masked-dense"]["memory_format"] for r in doc["results"]
                    if r["model"] == name and r["device"] == device), "contiguous")
        try:
            doc["profiles"].append(profile_model(
                name, device=device, dtype=dtype, batch=batch, image_size=cfg.image_size, ratio=cfg.profile_ratio,
                backend="auto" if "auto" in backends else backends[0], warmup=cfg.profile_warmup,
                repeats=cfg.profile_repeats, seed=cfg.seed, dense_format=fmt, progress=progress,
                compare_backends=[b for b in backends if b != "auto"]))
            return
        except Exception as e:
            reason = skip_reason(e)
            print(f"per-layer profile of {name} skipped: {reason}", file=sys.stderr)
            doc["profiles"].append({"model": name, "skipped": reason})
            if cfg.profile_model:
                return
