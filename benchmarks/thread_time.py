"""Encoder forward+backward speed-ups in CPU time of one thread, for a machine shared with other jobs.

``spark-sparse bench`` times wall-clock, which on a loaded machine measures the other jobs. This
runs the same contenders and the same calls (``contenders.encoder_call``: images and mask in, the
four stage maps out, backward) on one thread and reads ``time.thread_time()``, which contention
barely moves (memory-bandwidth contention still does, for every contender alike). Round-robin:
each round times every contender once; a speed-up is the median over rounds of the per-round
ratio, against the faster of the dense model in NCHW and in channels-last.

    python -m spark_sparse.benchmarks.thread_time --model resnet50 --mask-ratios 0.6 0.75 0.9 \\
        --masked-dense 0.6 --out benchmarks/results/encoder-thread-time/resnet50.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List

import torch

from .contenders import Contender, DenseEncoder, create_model, encoder_call, make_inputs
from .environment import load_average
from .timing import timed

import spark_sparse as ss


def measure(model_name: str, ratios: List[float], masked_dense: List[float], batch: int, size: int,
            warmup: int, repeats: int, seed: int) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = create_model(model_name, torch.device("cpu"))
    sparse = Contender("sparse[auto]", "sparse", ss.sparsify(model, backend="auto"), backend="auto")
    contenders = {"dense (contiguous)": Contender("dense", "dense", DenseEncoder(model), memory_format="contiguous"),
                  "dense (channels_last)": Contender("dense", "dense", DenseEncoder(model)).set_format("channels_last")}
    calls = {}
    for ratio in ratios:
        images, visible = make_inputs(batch, (size, size), ratio, seed, torch.device("cpu"))
        calls[f"sparse {ratio}"] = encoder_call(sparse, "fwd_bwd", images, visible, torch.float32)
        if ratio in masked_dense:
            reference = Contender("masked-dense", "masked_dense", ss.MaskedDenseEncoder(model))
            reference = reference.set_format("channels_last")
            calls[f"masked-dense {ratio}"] = encoder_call(reference, "fwd_bwd", images, visible, torch.float32)
    for name, c in contenders.items():
        calls[name] = encoder_call(c, "fwd_bwd", images, visible, torch.float32)
    times: Dict[str, List[float]] = {name: [] for name in calls}
    load = [load_average()]
    for round_ in range(warmup + repeats):
        for name, call in calls.items():
            t = timed(call, torch.device("cpu"), clock=time.thread_time)
            if round_ >= warmup:
                times[name].append(t)
        load.append(load_average())
    best_dense = [min(a, b) for a, b in zip(times["dense (contiguous)"], times["dense (channels_last)"])]
    speedups = {}
    for ratio in ratios:
        s = times[f"sparse {ratio}"]
        speedups[str(ratio)] = {"vs best dense": statistics.median(d / t for d, t in zip(best_dense, s))}
        if ratio in masked_dense:
            m = times[f"masked-dense {ratio}"]
            speedups[str(ratio)]["vs masked-dense (channels_last)"] = statistics.median(a / t for a, t in zip(m, s))
    return {"model": model_name, "batch": batch, "image_size": size, "threads": 1, "clock": "time.thread_time",
            "mode": "encoder fwd+bwd", "warmup": warmup, "repeats": repeats, "seed": seed,
            "visible_patches": {str(r): int(make_inputs(batch, (size, size), r, seed, torch.device("cpu"))[1].sum())
                                for r in ratios},
            "seconds": times, "speedups": speedups, "load_average_per_round": load,
            "torch": torch.__version__, "argv": sys.argv}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--mask-ratios", type=float, nargs="+", default=[0.6, 0.75, 0.9])
    p.add_argument("--masked-dense", type=float, nargs="*", default=[], metavar="RATIO",
                   help="mask ratios at which SparK's masked-dense reference is timed too")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSON file to write (refused if it exists)")
    args = p.parse_args(argv)
    if os.path.exists(args.out):
        print(f"{args.out} exists; remove it or choose another --out", file=sys.stderr)
        return 2
    doc = measure(args.model, args.mask_ratios, args.masked_dense, args.batch, args.size, args.warmup,
                  args.repeats, args.seed)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    for ratio, s in doc["speedups"].items():
        print(f"{args.model} mask {ratio}: " + ", ".join(f"{k} {v:.2f}x" for k, v in s.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
