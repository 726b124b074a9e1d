"""The router's choices in a benchmark: tuning a sparse encoder before anything is timed, and the
route of every routed layer (convs and the stem's max-pool) on a given input.

Measured routing tunes a layer on its calls with gradients (on the CPU over a few calls: their own
calls are its samples). A benchmark calls :func:`tune` first, so that no timed call pays for tuning
and the time tuning took is reported on its own.
"""
from __future__ import annotations

import time
import warnings
from collections import Counter
from typing import Dict, List

import torch
from torch import nn

from spark_sparse.layers.base import RoutedModule
from spark_sparse.recipe import INPUT_SIZE, MASK_RATIO
from spark_sparse.routing import KIND_IMPLEMENTATIONS, get_routing, layer_kind, tuning_stats
from spark_sparse.precision import DTYPES, autocast



# forward + backward calls tune() makes at most: measured routing settles in fewer
MAX_TUNING_CALLS = 16


def tune(encoder: nn.Module, images: torch.Tensor, visible: torch.Tensor,
         amp_dtype: torch.dtype = torch.float32) -> Dict[str, object]:
    """Forward + backward calls of ``encoder`` until its 'auto' layers have decided; what tuning cost
    (``tuning_s``: the router's own account; ``calls``: how many calls it took)."""
    before, start = tuning_stats(), time.perf_counter()
    calls = 0
    while calls == 0 or (tuning_stats()["pending"] and calls < MAX_TUNING_CALLS):
        with torch.enable_grad():
            with autocast(images.device, amp_dtype):
                outputs = encoder(images, visible)
            sum(o.float().sum() for o in outputs).backward()
        encoder.zero_grad(set_to_none=True)
        calls += 1
    after = tuning_stats()
    if after["pending"]:
        warnings.warn(f"measured routing still sampling {after['pending']} layer shape(s) after {calls} calls: "
                      f"later timed calls may include samples", RuntimeWarning, stacklevel=2)
    return {"policy": get_routing(), "tuning_s": after["seconds"] - before["seconds"], "pending": after["pending"],
            "tuned_layers": after["tuned"] - before["tuned"], "cached_layers": after["cached"] - before["cached"],
            "calls": calls, "first_calls_s": time.perf_counter() - start}


def routes(encoder: nn.Module, images: torch.Tensor, visible: torch.Tensor,
           amp_dtype: torch.dtype = torch.float32) -> List[dict]:
    """Every routed layer's route on these inputs (convs, Linears, max-pools): [{path, implementation, reason,
    choice}], in call order; ``choice`` is False for layers with a single implementation (patchify)."""
    rows: List[dict] = []

    def record(module: RoutedModule, args, path: str) -> None:
        x = args[0]
        r = module.route_for(x)
        rows.append({"path": getattr(module, "path", path), "implementation": r.implementation, "reason": r.reason,
                     "choice": len(KIND_IMPLEMENTATIONS[layer_kind(module.layer_spec(x), x.level.r)]) > 1})

    hooks = [m.register_forward_pre_hook(lambda module, args, path=path: record(module, args, path))
             for path, m in encoder.named_modules() if isinstance(m, RoutedModule)]
    try:
        with torch.no_grad(), autocast(images.device, amp_dtype):
            encoder(images, visible)
    finally:
        for h in hooks:
            h.remove()
    return rows


def summary(rows: List[dict]) -> str:
    """'matmul 37, tiles 9, torch 7': how many routed layers each implementation runs."""
    counts = Counter(row["implementation"] for row in rows)
    return ", ".join(f"{impl} {n}" for impl, n in counts.most_common())


def main(argv=None) -> int:
    """What measured routing picks on this machine: tune each model and dtype, print every routed layer
    that had a choice with its route and the router's reason, and the time tuning took."""
    import argparse
    import sys

    import spark_sparse as ss
    from spark_sparse.routing import cache_path, routing_mode

    from .contenders import create_model, make_inputs

    p = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=["resnet50", "convnext_tiny"])
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["fp32"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=INPUT_SIZE)
    p.add_argument("--mask-ratio", type=float, default=MASK_RATIO)
    p.add_argument("--out", default=None, help="also write the tables to this Markdown file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    lines = [f"# Measured routes on {device}", "", f"Routing cache: `{cache_path()}`; batch {args.batch}, "
             f"{args.size}², mask ratio {args.mask_ratio}.", ""]
    with routing_mode("measured"):
        for name in args.models:
            for dtype in args.dtypes:
                encoder = ss.sparsify(create_model(name, device))
                images, visible = make_inputs(args.batch, (args.size, args.size), args.mask_ratio, 0, device)
                cost = tune(encoder, images, visible, DTYPES[dtype])
                rows = routes(encoder, images, visible, DTYPES[dtype])
                lines += [f"## {name}, {dtype}: {summary(rows)}", "",
                          f"tuning {cost['tuning_s']:.2f} s ({cost['tuned_layers']} layer shapes measured, "
                          f"{cost['cached_layers']} read from the cache)", "", "| layer | route | reason |",
                          "|---|---|---|"]
                lines += [f"| {r['path']} | {r['implementation']} | {r['reason']} |" for r in rows if r["choice"]]
                lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
