"""Sparse twins of dense layers: each takes and returns SparseFeatures (see base.SparseModule)."""
