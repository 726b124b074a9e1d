"""Convolution backends, chosen per layer at call time.

``torch``  — gather → GEMM on index tables; any device, dtype and thread count (the oracle).
``tiles``  — a dense conv on each visible patch's block plus its halo (backends/tiles_backend.py).
``spconv`` — spconv's rulebooks and, on CUDA, its kernels (needs the ``spconv`` package).
``auto``   — per layer, the router's choice (spark_sparse/routing/), which also decides what runs
             a layer a backend cannot run (spconv and depthwise convs, for example).
"""
from __future__ import annotations

import functools
from typing import Dict

from .base import ConvBackend
from .rulebook import TorchBackend
from .tiles_backend import TilesBackend

BACKEND_NAMES = ("auto", "torch", "tiles", "spconv")


@functools.lru_cache(maxsize=None)
def spconv_available() -> bool:
    try:
        import spconv.pytorch  # noqa: F401
    except Exception:  # ImportError, or a CUDA build that cannot load here
        return False
    return True


@functools.lru_cache(maxsize=None)
def _instances() -> Dict[str, ConvBackend]:
    backends: Dict[str, ConvBackend] = {"torch": TorchBackend(), "tiles": TilesBackend()}
    if spconv_available():
        from .spconv_backend import SpconvBackend
        backends["spconv"] = SpconvBackend()
    return backends


def check_backend_name(name: str) -> str:
    """Validate a user-given backend name early, with the reason when it cannot be used here."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if name == "spconv" and not spconv_available():
        raise ImportError("backend 'spconv' needs the spconv package: pip install spconv (CPU) or "
                          "spconv-cu126 (CUDA 12.6; see the README for other CUDA versions)")
    return name


def get_backend(name: str) -> ConvBackend:
    check_backend_name(name)
    return _instances()[name]
