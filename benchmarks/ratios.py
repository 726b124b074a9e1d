"""Ratios of a result record: speed-ups, MAC ratios and memory ratios, and how records group.

Ratios are the headline. A speed-up is the median over the interleaved repeats of
(other contender's time / sparse time), each repeat paired with the same round's sparse time, so
machine drift cancels.
"""
from __future__ import annotations

from typing import Dict, List

from .timing import paired_speedup

BASES = {"vs_masked_dense": "masked-dense", "vs_dense": "dense", "vs_published": "spark-published"}
# suffixes of the step contenders that recompute: the decoder's blocks, and the encoder's too
CHECKPOINTED = {" ckpt": "decoder", " ckpt-all": "encoder + decoder"}


def sparse_names(rec: dict) -> List[str]:
    return [n for n, c in rec["contenders"].items() if c["kind"] == "sparse"]


def headline_sparse(rec: dict) -> str:
    """The sparse contender of the headline: 'auto' (what users get by default) when it ran."""
    names = sparse_names(rec)
    return "sparse[auto]" if "sparse[auto]" in names else names[0]


def add_ratios(rec: dict) -> dict:
    """Fill ``rec`` with speed-ups, MAC ratios and memory ratios of every sparse contender."""
    rec["speedup"] = {}
    for mode, per in rec["time_ms"].items():
        out = rec["speedup"].setdefault(mode, {})
        for s in sparse_names(rec):
            if s not in per:
                continue
            out[s] = {key: paired_speedup(per[base]["repeats"], per[s]["repeats"])
                      for key, base in BASES.items() if base in per}
    macs = rec["macs"]
    rec["mac_ratio"] = {part: macs[part]["masked-dense"] / max(macs[part]["sparse"], 1)
                        for part in ("encoder", "step") if macs.get(part)}
    rec["memory_ratio"] = {}
    for mode, per in rec.get("peak_memory_bytes", {}).items():
        if not isinstance(per, dict):
            continue
        out = rec["memory_ratio"].setdefault(mode, {})
        for s in sparse_names(rec):
            if per.get(s):
                out[s] = {key: per[base] / per[s] for key, base in BASES.items() if base in per}
    rec["checkpointing"] = checkpointing_cost(rec)
    return rec


def checkpointing_cost(rec: dict) -> Dict[str, dict]:
    """Per checkpointed step contender measured beside the same contender without checkpointing:
    what it recomputes, the cut in peak step memory (1 - with/without) and the extra step time
    (paired median of with/without, - 1)."""
    out: Dict[str, dict] = {}
    times = rec["time_ms"].get("step", {})
    memory = rec.get("peak_memory_bytes", {}).get("step", {})
    for name in sparse_names(rec):
        suffix = next((s for s in CHECKPOINTED if name.endswith(s)), None)
        plain = name[:-len(suffix)] if suffix else None
        if plain is None or plain not in times or name not in times:
            continue
        cost = {"against": plain, "recomputed": CHECKPOINTED[suffix],
                "time_cost": paired_speedup(times[name]["repeats"], times[plain]["repeats"]) - 1.0}
        if isinstance(memory, dict) and memory.get(plain) and name in memory:
            cost["peak_memory_cut"] = 1.0 - memory[name] / memory[plain]
        out[name] = cost
    return out


def group_results(results: List[dict]) -> Dict[tuple, List[dict]]:
    """Records of one (model, device, dtype, batch, image size, background load), in the order they ran."""
    groups: Dict[tuple, List[dict]] = {}
    for rec in results:
        groups.setdefault((rec["model"], rec["device"], rec["dtype"], rec["batch"], tuple(rec["image_size"]),
                           rec.get("background_load", 0)), []).append(rec)
    return groups


def contention(results: List[dict], mode: str = "fwd_bwd", base: str = "vs_dense") -> List[dict]:
    """How much of its quiet speed-up (``mode``, ``base``) the headline sparse contender keeps under
    each background load: one entry per (model, device, dtype, batch, size, mask ratio) measured
    both quiet (load 0) and loaded."""
    quiet = {}
    for rec in results:
        if rec.get("background_load", 0) == 0:
            quiet[_case_key(rec)] = rec
    out = []
    for rec in results:
        load, q = rec.get("background_load", 0), quiet.get(_case_key(rec))
        if load == 0 or q is None:
            continue
        s = headline_sparse(rec)
        loaded = rec["speedup"].get(mode, {}).get(s, {}).get(base)
        calm = q["speedup"].get(mode, {}).get(s, {}).get(base)
        if loaded is None or calm is None:
            continue
        out.append({"model": rec["model"], "device": rec["device"], "dtype": rec["dtype"], "batch": rec["batch"],
                    "mask_ratio": rec["mask_ratio"], "load": load, "quiet": calm, "loaded": loaded,
                    "kept": loaded / calm})
    return out


def _case_key(rec: dict) -> tuple:
    return rec["model"], rec["device"], rec["dtype"], rec["batch"], tuple(rec["image_size"]), rec["mask_ratio"]
