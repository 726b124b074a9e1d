"""Speed, memory and FLOPs of the sparse encoder vs the masked-dense reference and plain dense;
imports as ``spark_sparse.benchmarks`` (see kernels/__init__.py for why).

``spark-sparse bench`` (spark_sparse/commands/bench.py) drives it:
config.py (what to measure) → runner.py (the sweep) using contenders.py (the three encoders),
step.py (the whole SparK step: the one adapter to ``spark_sparse.spark``), timing.py, memory.py,
macs.py and profile_layers.py (per-layer sparse vs dense twin) → report.py (JSON, Markdown) and
plots.py (PNG). gpu.sh runs the GPU tests and the GPU benchmark offline.
"""
