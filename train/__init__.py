"""SparK pre-training; imports as ``spark_sparse.train`` (see kernels/__init__.py for why)."""
