"""PNG plots of a results document: speed-up vs mask ratio (with the ideal), per-layer breakdown."""
from __future__ import annotations

import math
from typing import Dict, List

from .ratios import group_results, headline_sparse, sparse_names

MODE_STYLE = {"fwd": ("encoder fwd", "tab:blue"), "fwd_bwd": ("encoder fwd+bwd", "tab:orange"),
              "step": ("whole SparK step", "tab:green")}


def pyplot():
    """matplotlib's pyplot on its file-only Agg backend, imported on first use (only plots need it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str, dpi: int) -> str:
    """Write ``fig`` to ``path`` and free it (pyplot keeps every open figure otherwise)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def plot_speedups(doc: dict, path: str) -> str:
    """One panel per model (and device, dtype, batch): speed-up of the sparse encoder vs mask ratio."""
    plt = pyplot()
    groups = group_results(doc["results"])
    cols = min(len(groups), 3)
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    for ax, ((model, device, dtype, batch, size, load), recs) in zip(axes.flat, groups.items()):
        ratios = [r["mask_ratio"] for r in recs]
        s = headline_sparse(recs[0])
        ax.plot(ratios, [r["ideal_ratio"] for r in recs], "k--", marker="x", label="ideal = 1 / visible fraction")
        ax.axhline(1.0, color="grey", lw=0.8)
        for mode, (label, color) in MODE_STYLE.items():
            ys = [r.get("speedup", {}).get(mode, {}).get(s, {}).get("vs_masked_dense") for r in recs]
            if any(y is not None for y in ys):
                ax.plot(ratios, [float("nan") if y is None else y for y in ys], marker="o", color=color,
                        label=f"{label} vs masked-dense")
            ys = [r.get("speedup", {}).get(mode, {}).get(s, {}).get("vs_dense") for r in recs]
            if mode == "fwd_bwd" and any(y is not None for y in ys):
                ax.plot(ratios, [float("nan") if y is None else y for y in ys], marker="s", ls=":", color=color,
                        label=f"{label} vs plain dense")
        for other in sparse_names(recs[0]):
            if other == s:
                continue
            ys = [r.get("speedup", {}).get("fwd_bwd", {}).get(other, {}).get("vs_masked_dense") for r in recs]
            if any(y is not None for y in ys):
                ax.plot(ratios, [float("nan") if y is None else y for y in ys], lw=0.9, alpha=0.6,
                        label=f"{other} fwd+bwd vs masked-dense")
        busy = f" · {load} busy processes" if load else ""
        ax.set_title(f"{model} · {device} {dtype} · batch {batch} · {size[0]}×{size[1]}{busy}\n(sparse = {s})",
                     fontsize=9)
        ax.set_xlabel("mask ratio")
        ax.set_ylabel("speed-up (× faster than the other)")
        ax.set_yscale("log", base=2)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5, loc="upper left")
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    return save_figure(fig, path, dpi=110)


PHASE_COLORS = {"data": "tab:grey", "encoder_fwd": "tab:orange", "densify": "tab:olive", "decoder_fwd": "tab:blue",
                "loss": "tab:pink", "decoder_bwd": "tab:cyan", "densify_bwd": "tab:green", "encoder_bwd": "tab:red",
                "optimizer": "tab:purple"}


def plot_step_phases(doc: dict, path: str) -> str:
    """One stacked bar per step contender (per model, dtype, batch, mask ratio and load): where its
    median step time goes, phase by phase."""
    plt = pyplot()
    bars = [(f"{rec['model']} {rec['dtype']} b{rec['batch']} r{rec['mask_ratio']:.2f}"
             + (f" load {rec['background_load']}" if rec.get("background_load") else "") + f" · {name}", split)
            for rec in doc["results"] for name, split in rec.get("step_phases_ms", {}).items()]
    fig, ax = plt.subplots(figsize=(11, 0.4 * len(bars) + 1.6))
    for y, (_, split) in enumerate(bars):
        left = 0.0
        for phase, ms in split.items():
            ax.barh(y, ms / 1e3, left=left, color=PHASE_COLORS.get(phase), height=0.7,
                    label=phase if y == 0 or phase not in bars[0][1] else None)
            left += ms / 1e3
    ax.set_yticks(range(len(bars)))
    ax.set_yticklabels([label for label, _ in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per step (median of the timed repeats)")
    ax.grid(axis="x", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    ax.legend(seen.values(), seen.keys(), fontsize=7, ncol=5, loc="lower right")
    ax.set_title("Where the whole SparK step's time goes", fontsize=10)
    return save_figure(fig, path, dpi=100)


def _group_key(layer: dict) -> str:
    """Stage and kind of a layer, e.g. 'layer2 · 3x3 torch' — the rows of the breakdown."""
    stage = layer["path"].split(".")[0]
    kind = layer["how"] if layer["type"] in ("SparseConv2d", "SparseLinear") else layer["type"]
    return f"{stage} · {kind}"


def plot_profile(profile: dict, path: str, mode: str = "fwd_bwd", top: int = 25) -> str:
    """Left: time per (stage, layer kind), sparse vs its twins. Right: the slowest sparse layers."""
    plt = pyplot()
    if mode not in profile["modes"]:
        mode = profile["modes"][0]
    kinds = ("sparse", "dense", "masked-dense")
    colors = {"sparse": "tab:orange", "dense": "tab:grey", "masked-dense": "tab:blue"}
    groups: Dict[str, Dict[str, float]] = {}
    for layer in profile["layers"]:
        g = groups.setdefault(_group_key(layer), dict.fromkeys(kinds, 0.0))
        for k in kinds:
            g[k] += layer["time_ms"].get(mode, {}).get(k, 0.0)
    names: List[str] = list(groups)
    slow = sorted(profile["layers"], key=lambda l: -l["time_ms"].get(mode, {}).get("sparse", 0.0))[:top]
    height = max(len(names), len(slow)) * 0.28 + 1.5
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, height))
    for ax, labels, values in ((ax1, names, [groups[n] for n in names]),
                               (ax2, [f"{l['path']} ({l['how']})" for l in slow],
                                [l["time_ms"].get(mode, {}) for l in slow])):
        ys = range(len(labels))
        for i, k in enumerate(kinds):
            ax.barh([y + (i - 1) * 0.27 for y in ys], [v.get(k, 0.0) for v in values], height=0.27,
                    color=colors[k], label=k)
        ax.set_yticks(list(ys))
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"{mode} time, ms (median of {profile['repeats']})")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_title("by stage and layer kind", fontsize=9)
    ax2.set_title(f"the {len(slow)} slowest sparse layers", fontsize=9)
    fig.suptitle(f"{profile['model']} per-layer {mode}: {profile['device']} {profile['dtype']}, batch "
                 f"{profile['batch']}, mask ratio {profile['mask_ratio']}, backend {profile['backend']}", fontsize=10)
    return save_figure(fig, path, dpi=100)
