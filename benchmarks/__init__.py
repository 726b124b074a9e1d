"""Speed, memory and FLOPs of the sparse encoder vs the masked-dense reference and plain dense;
imports as ``spark_sparse.benchmarks`` (see kernels/__init__.py for why).

``spark-sparse bench`` (spark_sparse/commands/bench.py) drives it:
config.py (what to measure) → runner.py (the sweep, under load.py's busy processes when asked) over
case.py (one model × batch × device × dtype: contenders.py's three encoders and the whole-step
contenders of step.py, SparK as published among them), timing.py, memory.py (+ memory_child.py, the
CPU peak-RSS child process), macs.py, profile_layers.py (per-layer sparse vs dense twin) and
head_variants.py (the dense head's exact alternatives) → schema.py (the JSON), ratios.py, markdown.py
(tables), plots.py (PNG), report.py (the files of a run) and readme.py (the README's headline block).
loss_curves.py compares pretrain runs from their metrics.jsonl. gpu.sh runs the GPU tests and the
GPU benchmark offline.
"""
