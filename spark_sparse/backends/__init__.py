"""Convolution backends: the names a user picks for k×k convs (``sparsify(backend=...)``,
``SparseEncoder.set_backend``), each a conv function of the router's table (routing/implementations.py).

``torch``  — gather → GEMM on index tables; any device, dtype and thread count (the oracle;
             backends/rulebook.py ``torch_conv``).
``gather-conv`` — the same gather, its forward and input-gradient GEMMs as oneDNN's / cuDNN's 1×1
             convolutions (``gather_conv``): faster where the BLAS is slow (a Zen 5 EPYC in fp32).
``tiles``  — a dense conv on each visible patch's block plus its halo (kernels/tile_conv.py ``tile_conv``).
``spconv`` — spconv's rulebooks and, on CUDA, its kernels (needs the ``spconv`` package;
             backends/spconv_backend.py ``spconv_conv``).
``auto``   — per layer, the router's choice (spark_sparse/routing/), which also decides what runs
             a layer a backend cannot run (spconv and depthwise convs, for example).
"""
from __future__ import annotations

import functools

BACKEND_NAMES = ("auto", "torch", "gather-conv", "tiles", "spconv")


@functools.lru_cache(maxsize=None)
def spconv_available() -> bool:
    try:
        import spconv.pytorch  # noqa: F401
    except Exception:  # ImportError, or a CUDA build that cannot load here
        return False
    return True


def check_backend_name(name: str) -> str:
    """Validate a user-given backend name early, with the reason when it cannot be used here."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if name == "spconv" and not spconv_available():
        raise ImportError("backend 'spconv' needs the spconv package: pip install spconv (CPU) or "
                          "spconv-cu126 (CUDA 12.6; see the README for other CUDA versions)")
    return name
