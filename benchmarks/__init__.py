"""Speed, memory and FLOPs of the sparse encoder vs the masked-dense reference and plain dense;
imports as ``spark_sparse.benchmarks`` (see kernels/__init__.py for why)."""
