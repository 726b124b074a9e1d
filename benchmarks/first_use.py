"""What measured routing's first use costs a user: the same training-like steps of a sparse encoder
in a fresh process with an empty routing cache (it tunes) and in a fresh process that reads the
cache the first one wrote (it tunes nothing), side by side.

Each run is its own process, as a user's first run is: library kernels are created and index tables
built in both, so the difference is what tuning adds. Pairs repeat with a new empty cache each time,
in alternating order (cold then warm on its cache; warm on the last pair's cache then cold), so a
drift of the machine's speed does not favour either; the result is the median of the pairs'
differences.

    python -m benchmarks.first_use --model resnet50 --batch 16 --steps 8 --pairs 5 --out DIR
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

from spark_sparse.recipe import INPUT_SIZE, MASK_RATIO


def child(args) -> None:
    """Run the steps and print one JSON line: seconds per step and the router's counters."""
    import torch

    import spark_sparse as ss
    from spark_sparse.routing import routing_mode, tuning_stats

    from .contenders import create_model, make_inputs

    torch.manual_seed(0)
    encoder = ss.sparsify(create_model(args.model, torch.device("cpu")))
    steps = []
    with routing_mode("measured"):
        for step in range(args.steps):
            images, visible = make_inputs(args.batch, (args.size, args.size), args.mask_ratio, step,
                                          torch.device("cpu"))
            start = time.perf_counter()
            outs = encoder(images, visible)
            sum(o.mean() for o in outs).backward()
            encoder.zero_grad(set_to_none=True)
            steps.append(time.perf_counter() - start)
    print(json.dumps({"steps": steps, "tuning": tuning_stats()}))


def run_child(args, cache: str) -> dict:
    env = dict(os.environ, SPARK_SPARSE_CACHE_DIR=cache)
    env.pop("SPARK_SPARSE_ROUTING", None)
    cmd = [sys.executable, "-m", "benchmarks.first_use", "--child", "--model", args.model, "--batch",
           str(args.batch), "--size", str(args.size), "--mask-ratio", str(args.mask_ratio), "--steps",
           str(args.steps)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"first_use: the child run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def pair_record(args, i: int, cold: dict, warm: dict) -> dict:
    extra = sum(cold["steps"]) - sum(warm["steps"])
    print(f"pair {i + 1}/{args.pairs}: cold {sum(cold['steps']):.2f} s (tuned {cold['tuning']['tuned']} layer "
          f"shapes), warm {sum(warm['steps']):.2f} s (tuned {warm['tuning']['tuned']}, read "
          f"{warm['tuning']['cached']}): tuning added {extra:.2f} s", flush=True)
    return {"cold": cold, "warm": warm, "extra_s": extra}


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=INPUT_SIZE)
    p.add_argument("--mask-ratio", type=float, default=MASK_RATIO)
    p.add_argument("--steps", type=int, default=8, help="encoder forward + backward steps per run (a new mask each)")
    p.add_argument("--pairs", type=int, default=5, help="cold / warm pairs of runs")
    p.add_argument("--out", default=None, help="folder for results.json and results.md")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    pairs = []
    with tempfile.TemporaryDirectory(prefix="spark-sparse-caches-") as caches:
        for i in range(args.pairs):
            cache = os.path.join(caches, str(i))
            if i % 2 == 0:
                cold = run_child(args, cache)
                warm = run_child(args, cache)
            else:
                warm = run_child(args, os.path.join(caches, str(i - 1)))
                cold = run_child(args, cache)
            pairs.append(pair_record(args, i, cold, warm))
    extra = statistics.median(p["extra_s"] for p in pairs)
    warm_step = statistics.median(s for p in pairs for s in p["warm"]["steps"][2:] or p["warm"]["steps"])
    summary = (f"{args.model}, batch {args.batch}, {args.size}², mask ratio {args.mask_ratio}, {args.steps} steps: "
               f"first-use tuning added {extra:.2f} s (median of {args.pairs} cold/warm pairs), "
               f"{extra / warm_step:.1f} steps of {warm_step:.2f} s")
    print(summary)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "child"},
                                                      "pairs": pairs, "extra_s": extra, "warm_step_s": warm_step},
                                                     indent=1))
        lines = ["| pair | cold s | warm s | tuning added s | layer shapes tuned |", "|---|---|---|---|---|"]
        lines += [f"| {i + 1} | {sum(p['cold']['steps']):.2f} | {sum(p['warm']['steps']):.2f} | {p['extra_s']:.2f} | "
                  f"{p['cold']['tuning']['tuned']} |" for i, p in enumerate(pairs)]
        (out / "results.md").write_text(summary + "\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
