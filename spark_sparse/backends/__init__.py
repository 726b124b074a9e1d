"""Convolution backends, chosen per layer at call time.

``torch``  — gather → GEMM on index tables; any device, dtype and thread count (the oracle).
``spconv`` — spconv's rulebooks and, on CUDA, its kernels (needs the ``spconv`` package).
``auto``   — per layer, the best available one for the layer, device and dtype.
A backend that cannot run a given layer (e.g. spconv and depthwise convs) hands it to ``torch``.
"""
from __future__ import annotations

import functools
from typing import Dict

import torch

from .base import ConvBackend, ConvSpec
from .rulebook import TorchBackend

BACKEND_NAMES = ("auto", "torch", "spconv")


@functools.lru_cache(maxsize=None)
def spconv_available() -> bool:
    try:
        import spconv.pytorch  # noqa: F401
    except Exception:  # ImportError, or a CUDA build that cannot load here
        return False
    return True


@functools.lru_cache(maxsize=None)
def _instances() -> Dict[str, ConvBackend]:
    backends: Dict[str, ConvBackend] = {"torch": TorchBackend()}
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


def resolve_backend(name: str, spec: ConvSpec, x: torch.Tensor) -> ConvBackend:
    """The backend that runs this layer: the requested one if it can, else ``torch``."""
    backends = _instances()
    if name == "auto":
        name = "spconv" if x.is_cuda and "spconv" in backends else "torch"
    backend = backends.get(name) or get_backend(name)
    if backend.unsupported(spec, x) is not None:
        return backends["torch"]
    return backend
