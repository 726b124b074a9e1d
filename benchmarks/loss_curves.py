"""Loss curves and speed of several ``spark-sparse pretrain`` runs side by side, from their metrics.jsonl.

``python -m spark_sparse.benchmarks.loss_curves LABEL=RUN_DIR ... --out curves.png`` draws each run's
per-step loss and prints, per run, the median img/s over its steps after the first (the first step
pays one-time costs) and the largest loss difference to the first run, step by step.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Dict, List

from .plots import pyplot, save_figure


def read_metrics(run_dir: str) -> List[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def summary(runs: Dict[str, List[dict]]) -> List[str]:
    first = next(iter(runs.values()))
    base = {r["step"]: r["loss"] for r in first}
    lines = []
    for label, records in runs.items():
        speed = statistics.median(r["img_per_s"] for r in records[1:]) if len(records) > 1 else float("nan")
        diff = max((abs(r["loss"] - base[r["step"]]) for r in records if r["step"] in base), default=float("nan"))
        lines.append(f"{label}: {len(records)} steps, median {speed:.2f} img/s after step 1, last loss "
                     f"{records[-1]['loss']:.4f}, max |loss - {next(iter(runs))}| {diff:.4f}")
    return lines


def plot(runs: Dict[str, List[dict]], path: str) -> str:
    fig, ax = pyplot().subplots(figsize=(6.4, 3.8))
    for label, records in runs.items():
        ax.plot([r["step"] for r in records], [r["loss"] for r in records], marker=".", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (masked patches, per-patch normalised MSE)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    p.add_argument("--out", default=None, help="PNG of the loss curves")
    args = p.parse_args(argv)
    runs = {}
    for item in args.runs:
        label, sep, run_dir = item.partition("=")
        if not sep:
            print(f"loss_curves: {item!r} is not LABEL=RUN_DIR", file=sys.stderr)
            return 2
        runs[label] = read_metrics(run_dir)
    print("\n".join(summary(runs)))
    if args.out:
        print(f"wrote {plot(runs, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
