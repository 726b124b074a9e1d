"""Which sparse depthwise implementation is fastest at each ConvNeXt resolution (the ``auto`` rule).

Times forward + backward of one 7×7 depthwise layer per stage, at ConvNeXt-T widths, for every
implementation in kernels/depthwise.py and for the masked-dense reference layer (dense conv on the
whole map, then re-mask), median of repeats after a warm-up. The figures behind the router's fixed
depthwise rule (spark_sparse/routing/rules.py, benchmarks/results/routing-rules.md) come from this script.

    python -m spark_sparse.benchmarks.depthwise_select --threads 2 --batch 8 --size 224
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import spark_sparse as ss

from spark_sparse.features import SparseFeatures
from spark_sparse.geometry import Geometry
from spark_sparse.routing import compute, unsupported
from spark_sparse.masks import dense_mask, patch_grid
from spark_sparse.spec import ConvSpec
from spark_sparse.plan import PATCH_SIZE
from spark_sparse.recipe import MASK_RATIO

STAGES = ((4, 96), (8, 192), (16, 384), (32, 768))  # (stride, channels) of ConvNeXt-T


def _time(fn, repeats: int, sync, clock=time.perf_counter) -> float:
    fn()  # warm-up: index tables, oneDNN primitives, Triton compilation
    times = []
    for _ in range(repeats):
        sync()
        start = clock()
        fn()
        sync()
        times.append(clock() - start)
    return statistics.median(times)


def measure(batch: int, size: int, ratio: float, repeats: int, device: torch.device, dtype: torch.dtype,
            impls, clock=time.perf_counter) -> list:
    g = torch.Generator().manual_seed(0)
    visible = ss.random_visible(batch, patch_grid(size, size, PATCH_SIZE), ratio, generator=g).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for stride, c in STAGES:
        geometry = Geometry(visible)
        n = geometry.level(stride).num_sites
        spec = ConvSpec(c, c, (7, 7), (1, 1), (3, 3), (1, 1), c)
        weight = torch.randn(c, 1, 7, 7, device=device, dtype=dtype, requires_grad=True)
        feats = torch.randn(n, c, device=device, dtype=dtype, requires_grad=True)
        x = SparseFeatures(feats, geometry, stride)
        dense = x.dense().detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        mask = dense_mask(visible, stride, PATCH_SIZE).to(dtype)
        row = {"stride": stride, "channels": c, "sites": n}

        def masked_dense():
            (F.conv2d(dense, weight, None, 1, 3, 1, c) * mask).sum().backward()

        row["masked-dense"] = _time(masked_dense, repeats, sync, clock)
        for impl in impls:
            name = f"depthwise-{impl}"
            if unsupported(name, spec, geometry.level(stride).r, device, dtype) is None:
                row[impl] = _time(lambda: compute(name, x, weight, None, spec).sum().backward(), repeats,
                                  sync, clock)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--mask-ratio", type=float, default=MASK_RATIO)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    p.add_argument("--impls", nargs="+", default=None, help="default: table tiles dense (+ triton on CUDA)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall: elapsed time; cpu: this process's CPU time (use with --threads 1 on a machine "
                        "shared with other jobs: their load then does not enter the figures)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    impls = args.impls or (["table", "tiles", "dense"] + (["triton"] if device.type == "cuda" else []))
    if args.clock == "cpu" and device.type == "cuda":
        p.error("--clock cpu measures the CPU; use wall on CUDA")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rows = measure(args.batch, args.size, args.mask_ratio, args.repeats, device, getattr(torch, args.dtype), impls,
                   clock)
    cols = ["masked-dense"] + impls
    print(f"depthwise 7x7 fwd+bwd, {device} {args.dtype}, {args.threads} threads, batch {args.batch}, "
          f"{args.size}², mask ratio {args.mask_ratio}, median of {args.repeats} ({args.clock} ms)")
    print(f"{'stride':>6} {'C':>4} {'sites':>6} " + " ".join(f"{c:>12}" for c in cols) + "   fastest")
    for row in rows:
        times = {c: row[c] for c in cols if c in row}
        best = min((t, c) for c, t in times.items() if c != "masked-dense")[1]
        print(f"{row['stride']:>6} {row['channels']:>4} {row['sites']:>6} "
              + " ".join(f"{times[c] * 1e3:>12.2f}" if c in times else f"{'-':>12}" for c in cols) + f"   {best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
