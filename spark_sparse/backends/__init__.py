"""Convolution backends, chosen per layer at call time.

``torch``  — gather → GEMM on index tables; any device, dtype and thread count (the oracle).
``tiles``  — a dense conv on each visible patch's block plus its halo (backends/tiles_backend.py).
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


def choose_backend(spec: ConvSpec, r: int, x: torch.Tensor) -> str:
    """What ``auto`` runs for one k×k layer whose input patch blocks are r×r sites."""
    if x.is_cuda:
        return "spconv" if "spconv" in _instances() else "torch"
    if x.dtype == torch.float64:
        return "torch"  # oneDNN has no fp64 convolutions; the native fallback is slow
    min_r = TILES_MIN_R if spec.stride[0] == 1 else TILES_MIN_R_STRIDED
    return "tiles" if r >= min_r else "torch"


# CPU, fp32/bf16: below these patch block sizes the halo and the small-image inefficiency of the
# dense kernels cost more than the gather-GEMM rulebook. Measured (ResNet-50 shapes, batch 16, 224²,
# mask ratio 0.6, 2 threads, one conv's forward+backward, median of 5, ms; 2026-11-29, quiet machine,
# after the rulebook's strided input gradient stopped paying 4× its forward GEMM):
#   layer (input stride, r)         torch  tiles
#   3×3/1   stride 4  (r 8)   C 64    164     88   → tiles
#   3×3/1   stride 8  (r 4)   C 128    81     65   → tiles
#   3×3/1   stride 16 (r 2)   C 256    50     96   → torch
#   3×3/1   stride 32 (r 1)   C 512    75    213   → torch
#   3×3/2   stride 4  (r 8)   C 128   113    107   → tiles
#   3×3/2   stride 8  (r 4)   C 256    71    100   → torch
#   3×3/2   stride 16 (r 2)   C 512    80    228   → torch
#   7×7/2 stem, stride 1 (r 32), no input grad: dense 351, torch 322, tiles 123   → tiles
# In the whole encoder: spark-sparse bench --profile-only --profile-model resnet50 (its "Backends per
# conv layer" table times every such conv on every backend, on its real input).
TILES_MIN_R = 4
TILES_MIN_R_STRIDED = 8


def resolve_backend(name: str, spec: ConvSpec, x: torch.Tensor, r: int = 0) -> ConvBackend:
    """The backend that runs this layer: the requested one if it can, else ``torch``."""
    backends = _instances()
    if name == "auto":
        name = choose_backend(spec, r, x)
    backend = backends.get(name) or get_backend(name)
    if backend.unsupported(spec, x) is not None:
        return backends["torch"]
    return backend
