"""What measured routing's first use costs a user: the same training-like steps of a sparse encoder
in a fresh process with an empty routing cache (it tunes) and in a fresh process that reads the
cache the first one wrote (it tunes nothing), side by side.

Each run is its own process, as a user's first run is: library kernels are created and index tables
built in both, so the difference is what tuning adds. Pairs repeat with a new empty cache each time,
in alternating order (cold then warm on its cache; warm on the last pair's cache then cold), so a
drift of the machine's speed does not favour either; the result is the median of the pairs'
differences.

    python -m spark_sparse.benchmarks.first_use --model resnet50 --batch 16 --steps 10 --pairs 7 --out DIR
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
    cmd = [sys.executable, "-m", __spec__.name, "--child", "--model", args.model, "--batch",
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


def render(doc: dict) -> str:
    """results.md from results.json: the summary, what each step added (median over the pairs), the
    router's own account and every pair."""
    a, pairs = doc["args"], doc["pairs"]
    steps = len(pairs[0]["cold"]["steps"])
    per_step = [statistics.median(p["cold"]["steps"][i] - p["warm"]["steps"][i] for p in pairs) for i in range(steps)]
    lines = [f"{a['model']}, batch {a['batch']}, {a['size']}², mask ratio {a['mask_ratio']}, {steps} encoder forward + "
             f"backward steps per run: first-use tuning added **{doc['extra_s']:.2f} s** (median of {len(pairs)} "
             f"cold/warm pairs), {doc['extra_s'] / doc['warm_step_s']:.1f} steps of {doc['warm_step_s']:.2f} s.", ""]
    if "command" in doc:
        lines += [f"Command: `{doc['command']}` ({doc['date']}, load average at the start {doc['load_start']}, "
                  f"at the end {doc['load_end']}).", ""]
    lines += ["Cold minus warm, step by step (median over the pairs, s): "
              + ", ".join(f"{d:+.2f}" for d in per_step) + f"; their sum {sum(per_step):.2f} s.", "",
              "The router's own account of what tuning added in each cold run (its `tuning_stats()['seconds']`: "
              "the wall time of side trials, or with sampling an estimate, the sampled calls' time beyond the "
              "fastest candidate's): "
              + ", ".join(f"{p['cold']['tuning']['seconds']:.2f}" for p in pairs) + " s.", "",
              "| pair | cold s | warm s | tuning added s | layer shapes tuned (cold) | read from the cache (warm) |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {i + 1} | {sum(p['cold']['steps']):.2f} | {sum(p['warm']['steps']):.2f} | {p['extra_s']:.2f} | "
              f"{p['cold']['tuning']['tuned']} | {p['warm']['tuning']['cached']} |" for i, p in enumerate(pairs)]
    return "\n".join(lines) + "\n"


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=INPUT_SIZE)
    p.add_argument("--mask-ratio", type=float, default=MASK_RATIO)
    p.add_argument("--steps", type=int, default=10, help="encoder forward + backward steps per run (a new mask "
                                                         "each); enough for measured routing to settle")
    p.add_argument("--pairs", type=int, default=7, help="cold / warm pairs of runs")
    p.add_argument("--out", default=None, help="folder for results.json and results.md")
    p.add_argument("--force", action="store_true", help="overwrite the results already in --out")
    p.add_argument("--render", metavar="RESULTS_JSON", help="write results.md beside this results.json, measuring "
                                                           "nothing")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.render:
        source = Path(args.render)
        (source.parent / "results.md").write_text(render(json.loads(source.read_text())))
        return 0
    out = Path(args.out) if args.out else None
    if out is not None and (out / "results.json").exists() and not args.force:
        p.error(f"{out / 'results.json'} exists; choose another --out or add --force to overwrite it")
    load_start = " ".join(f"{v:.2f}" for v in os.getloadavg())
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
    doc = {"args": {k: v for k, v in vars(args).items() if k not in ("child", "render", "force", "out")},
           "command": "python -m spark_sparse.benchmarks.first_use " + " ".join(sys.argv[1:] if argv is None else argv),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_start": load_start,
           "load_end": " ".join(f"{v:.2f}" for v in os.getloadavg()), "pairs": pairs,
           "extra_s": statistics.median(p["extra_s"] for p in pairs),
           "warm_step_s": statistics.median(s for p in pairs for s in p["warm"]["steps"][2:] or p["warm"]["steps"])}
    text = render(doc)
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(doc, indent=1))
        (out / "results.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
