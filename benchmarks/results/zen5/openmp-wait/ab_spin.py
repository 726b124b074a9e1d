"""How long libgomp's idle threads spin (GOMP_SPINCOUNT / OMP_WAIT_POLICY), quiet and with busy
processes beside: resnet50's sparse encoder and the dense channels-last model, forward + backward,
batch 16, 224², mask ratio 0.6, 2 threads.

libgomp reads the setting when torch loads, so each setting runs in its own process; the processes
run in rotation (every setting once per cycle, quiet and loaded), each timing ``--rounds`` interleaved
sparse / dense steps after two settling steps on a routing cache filled beforehand. Prints one line
per process and, at the end, the median over the cycles of each setting's medians.

    python ab_spin.py --cycles 3 --rounds 3 --cache /tmp/spin-cache [--settings NAME ...] [--busy 0]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {"libgomp default (300000)": {}, "GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
            "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
            "GOMP_SPINCOUNT=100000": {"GOMP_SPINCOUNT": "100000"},
            "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}


def child(busy: int, rounds: int, settle: int) -> None:
    import torch

    import spark_sparse as ss
    from spark_sparse.benchmarks.contenders import create_model, make_inputs
    from spark_sparse.benchmarks.load import background_load
    from spark_sparse.routing import routing_mode

    torch.set_num_threads(2)
    torch.manual_seed(0)
    dense = create_model("resnet50", torch.device("cpu")).to(memory_format=torch.channels_last)
    sparse = ss.sparsify(create_model("resnet50", torch.device("cpu")))
    images, visible = make_inputs(16, (224, 224), 0.6, 0, torch.device("cpu"))
    dense_images = images.contiguous(memory_format=torch.channels_last)

    def step(model, *inputs):
        start = time.perf_counter()
        sum(o.mean() for o in model(*inputs)).backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times = {"sparse": [], "dense": []}
    with routing_mode("measured"):
        for _ in range(settle):
            step(sparse, images, visible)
        step(dense, dense_images)
        with background_load(busy):
            time.sleep(0.5)
            for _ in range(rounds):
                times["sparse"].append(step(sparse, images, visible))
                times["dense"].append(step(dense, dense_images))
    print(json.dumps({k: statistics.median(v) for k, v in times.items()}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cache", required=True, help="routing cache folder, filled by the first process")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--busy", nargs="+", type=int, default=[2, 0], help="busy processes beside each measurement")
    p.add_argument("--child", nargs=3, type=int, metavar=("BUSY", "ROUNDS", "SETTLE"))
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return 0
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    base["SPARK_SPARSE_CACHE_DIR"] = args.cache
    subprocess.run([sys.executable, __file__, "--cache", args.cache, "--child", "0", "1", "14"], env=base,
                   check=True, capture_output=True)  # measured routing settles here, once
    found = {}
    for cycle in range(args.cycles):
        for busy in args.busy:
            for name in args.settings:
                variables = SETTINGS[name]
                out = subprocess.run([sys.executable, __file__, "--cache", args.cache, "--child", str(busy),
                                      str(args.rounds), "2"], env=dict(base, **variables), check=True,
                                     capture_output=True, text=True).stdout
                ms = {k: v * 1e3 for k, v in json.loads(out.strip().splitlines()[-1]).items()}
                found.setdefault((name, busy), []).append(ms)
                print(f"cycle {cycle + 1} busy {busy} {name}: sparse {ms['sparse']:.0f} ms, dense {ms['dense']:.0f} ms",
                      flush=True)
    print("\n| setting | busy processes | sparse ms | dense ms | dense / sparse |\n|---|---|---|---|---|")
    for busy in sorted(args.busy):
        for name in args.settings:
            runs = found[(name, busy)]
            s, d = (statistics.median(r[k] for r in runs) for k in ("sparse", "dense"))
            ratio = statistics.median(r["dense"] / r["sparse"] for r in runs)
            print(f"| {name} | {busy} | {s:.0f} | {d:.0f} | {ratio:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
