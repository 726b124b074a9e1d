#!/usr/bin/env bash
# The GPU check, for a person with one CUDA GPU and no network, from a checkout of this repository:
#
#     bash benchmarks/gpu.sh [WHEEL_DIR]
#
# WHEEL_DIR (optional): a folder of wheels for this machine's CUDA, e.g. spconv-cu126 and cumm-cu126
# (and any of their dependencies not installed yet); every .whl in it is installed with
# `pip --no-index --find-links WHEEL_DIR`. Without it the installed spconv (or none) is used.
# Uses the packages already installed (torch, timm, ...); nothing is downloaded. Finishes in under
# 8 minutes: the GPU tests (pytest -m gpu, at most 150 s), the routes measured routing picks on this
# GPU for resnet50 and convnext_tiny in fp32, bf16 and fp16 (at most 75 s), then a focused benchmark
# (at most 255 s, measured routing), whose results.json is written after every model, so a stop
# keeps what was measured.
# Output: benchmarks/results/gpu/ (routes.md, results.json, results.md, speedup.png, profile_*.png,
# pytest.log, routing-cache/routing.json: the decisions, a fresh cache so tuning is timed from scratch).
#
# Environment: OUT=<folder> to write elsewhere; BENCH_ARGS="..." to replace the benchmark's options;
# GPU_SH_DRY_RUN=1 runs the same steps on the CPU with --quick (to check this script without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export SPARK_SPARSE_CACHE_DIR="$OUT/routing-cache"
rm -f "$SPARK_SPARSE_CACHE_DIR/routing.json"
start=$SECONDS
status=0

if [ -n "${1:-}" ]; then
    shopt -s nullglob
    wheels=("$1"/*.whl)
    if [ ${#wheels[@]} -eq 0 ]; then
        echo "gpu.sh: no .whl files in $1 (give the folder that holds the spconv/cumm wheels)" >&2
        exit 2
    fi
    python -m pip install --no-index --find-links "$1" "${wheels[@]}" || { echo "gpu.sh: offline install failed" >&2; exit 2; }
fi

python - <<'PY' || exit 2
import os, sys, torch
dry = os.environ.get("GPU_SH_DRY_RUN") == "1"
if not torch.cuda.is_available() and not dry:
    sys.exit("gpu.sh: torch sees no CUDA device (torch %s, built for CUDA %s)" % (torch.__version__, torch.version.cuda))
from spark_sparse.backends import spconv_available
print("torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (dry run)",
      "| spconv", "usable" if spconv_available() else "NOT usable (the spconv backend will be skipped)")
PY

if [ "${GPU_SH_DRY_RUN:-0}" = "1" ]; then
    DEVICE_ARGS=(--devices cpu --quick --routing measured)
    ROUTE_ARGS=(--device cpu --models resnet18 convnext_atto --dtypes fp32 --batch 2 --size 64)
    TESTS=(tests/test_bench_units.py -k "readme or tables")
else
    DEVICE_ARGS=(--devices cuda --models resnet50 convnext_tiny --mask-ratios 0 0.6 0.9 --batch 64
                 --dtypes fp32 bf16 fp16 --warmup 1 --repeats 4 --profile-model resnet50 --profile-batch 32
                 --routing measured)
    ROUTE_ARGS=(--device cuda --models resnet50 convnext_tiny --dtypes fp32 bf16 fp16 --batch 32 --size 224)
    TESTS=(tests/ -m gpu)
fi

echo "== GPU tests ($(date -u +%H:%M:%S))"
timeout 150 python -m pytest -q "${TESTS[@]}" 2>&1 | tee "$OUT/pytest.log"
test_status=${PIPESTATUS[0]}
[ "$test_status" -eq 0 ] || { echo "gpu.sh: GPU tests failed or timed out (exit $test_status), see $OUT/pytest.log" >&2; status=1; }

echo "== measured routes ($(date -u +%H:%M:%S))"
timeout 75 python -m spark_sparse.benchmarks.routes "${ROUTE_ARGS[@]}" --out "$OUT/routes.md"
routes_status=$?
[ "$routes_status" -eq 0 ] || { echo "gpu.sh: measured routing failed or timed out (exit $routes_status)" >&2; status=1; }

echo "== benchmark ($(date -u +%H:%M:%S))"
if [ -n "${BENCH_ARGS:-}" ]; then
    read -r -a DEVICE_ARGS <<< "$BENCH_ARGS"
fi
timeout 255 python -m spark_sparse.cli bench "${DEVICE_ARGS[@]}" --no-progress --out "$OUT" \
    --note "benchmarks/gpu.sh"
bench_status=$?
if [ "$bench_status" -ne 0 ]; then
    echo "gpu.sh: benchmark failed or timed out (exit $bench_status); $OUT/results.json keeps what was measured" >&2
    status=1
fi
echo "== done in $((SECONDS - start)) s; results in $OUT"
exit $status
