#!/bin/bash
# The no-argument demo (spark-sparse pretrain) with libgomp's default spin (GOMP_SPINCOUNT=300000, set
# explicitly) and with the short spin (GOMP_SPINCOUNT=10000, what --shared-cpu sets), in cycles, with
# BUSY busy-looping processes beside the measured runs (default 0). One run first fills the routing
# cache, so no measured run tunes. Usage: demo_ab.sh OUT_DIR CYCLES [BUSY]
set -eu
out=$1; cycles=${2:-4}; busy=${3:-0}
mkdir -p "$out"
export SPARK_SPARSE_CACHE_DIR="$out/routing-cache"
unset OMP_WAIT_POLICY GOMP_SPINCOUNT
python -m spark_sparse.cli pretrain --out "$out/settle" > "$out/settle.log" 2>&1
pids=""
for _ in $(seq 1 "$busy"); do python -c "while True: pass" & pids="$pids $!"; done
trap '[ -n "$pids" ] && kill $pids' EXIT
for c in $(seq 1 "$cycles"); do
  GOMP_SPINCOUNT=300000 python -m spark_sparse.cli pretrain --out "$out/default-spin-$c" > "$out/default-spin-$c.log" 2>&1
  GOMP_SPINCOUNT=10000 python -m spark_sparse.cli pretrain --out "$out/short-spin-$c" > "$out/short-spin-$c.log" 2>&1
done
python - "$out" "$cycles" <<'PY'
import json, statistics, sys
out, cycles = sys.argv[1], int(sys.argv[2])
def run(name):
    rows = [json.loads(line) for line in open(f"{out}/{name}/metrics.jsonl")]
    return statistics.median(r["img_per_s"] for r in rows[1:]), [r["loss"] for r in rows]
print("| cycle | libgomp default spin img/s | short spin img/s | × | largest loss difference |")
print("|---|---|---|---|---|")
for c in range(1, cycles + 1):
    (a, la), (b, lb) = run(f"default-spin-{c}"), run(f"short-spin-{c}")
    print(f"| {c} | {a:.2f} | {b:.2f} | {b / a:.2f}× | {max(abs(x - y) for x, y in zip(la, lb)):.1e} |")
PY
