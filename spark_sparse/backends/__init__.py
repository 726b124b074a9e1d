"""Convolution backends, chosen per layer at call time.

``torch``  — gather → GEMM on index tables; any device, dtype and thread count (the oracle).
``tiles``  — a dense conv on each visible patch's block plus its halo (kernels/tile_conv.py).
``spconv`` — spconv's rulebooks and, on CUDA, its kernels (needs the ``spconv`` package).
``auto``   — per layer, the best available one for the layer, device and dtype (``choose_backend``).
A backend that cannot run a given layer (e.g. spconv and depthwise convs) hands it to ``torch``.
"""
from __future__ import annotations

import functools
from typing import Dict

import torch

from .base import ConvBackend, ConvSpec
from .rulebook import TorchBackend

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
    from ..kernels.tile_conv import TilesBackend
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


def choose_backend(spec: ConvSpec, r: int, x: torch.Tensor) -> str:
    """What ``auto`` runs for one k×k layer whose input patch blocks are r×r sites."""
    if x.is_cuda:
        return "spconv" if "spconv" in _instances() else "torch"
    if x.dtype == torch.float64:
        return "torch"  # oneDNN has no fp64 convolutions; the native fallback is slow
    return "tiles" if r >= TILES_MIN_R else "torch"


# CPU, fp32/bf16: below this block size the halo and small-image inefficiency of the dense kernels
# cost more than the gather-GEMM rulebook (measured: see benchmarks/results and choose_backend).
TILES_MIN_R = 8


def resolve_backend(name: str, spec: ConvSpec, x: torch.Tensor, r: int = 0) -> ConvBackend:
    """The backend that runs this layer: the requested one if it can, else ``torch``."""
    backends = _instances()
    if name == "auto":
        name = choose_backend(spec, r, x)
    backend = backends.get(name) or get_backend(name)
    if backend.unsupported(spec, x) is not None:
        return backends["torch"]
    return backend
