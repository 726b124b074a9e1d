"""Every way a sparse convolution can run, in one name space, and what each one can run.

A conv layer is one of four kinds (its shape, and for patchify convs the patch block it reads):
- ``pointwise`` 1×1 convs → ``matmul`` (one matmul on the (N, C) rows; a strided one first picks
  each output's top-left child);
- ``patchify`` kernel == stride, no padding, on blocks the stride divides → ``patchify`` (a reshape
  of each patch's block and one matmul);
- ``depthwise`` k×k convs → ``depthwise-table`` (the plain-PyTorch twin on neighbour tables),
  ``depthwise-tiles`` (halo tiles + the dense depthwise conv), ``depthwise-dense`` (the whole dense
  map), ``depthwise-triton`` (Triton kernels on the neighbour tables);
- ``table``: any other k×k conv → ``torch`` (gather → GEMM on index tables), ``tiles`` (halo tiles +
  the dense conv of oneDNN / cuDNN), ``spconv`` (spconv's rulebooks and CUDA kernels).
Each implementation's limits come from the code that runs it (kernels/, backends/); this module
only asks them, so a route never names an implementation that cannot run the layer.
"""
from __future__ import annotations

import functools
import os
from typing import Dict, List, Optional, Tuple

import torch

from ..backends import spconv_available
from ..spec import ConvSpec
from ..backends.spconv_backend import native_kernels_usable, spconv_unsupported
from ..kernels import depthwise as dw
from ..kernels.tile_conv import tiles_unsupported

KIND_IMPLEMENTATIONS: Dict[str, Tuple[str, ...]] = {
    "pointwise": ("matmul",),
    "patchify": ("patchify",),
    "table": ("torch", "tiles", "spconv"),
    "depthwise": ("depthwise-table", "depthwise-tiles", "depthwise-dense", "depthwise-triton"),
}
IMPLEMENTATIONS: Tuple[str, ...] = tuple(i for impls in KIND_IMPLEMENTATIONS.values() for i in impls)
DEPTHWISE_PREFIX = "depthwise-"


def layer_kind(spec: ConvSpec, r: Optional[int] = None) -> str:
    """Which of the four kinds ``spec`` is on input patch blocks of r×r sites (None: any block)."""
    if spec.kernel == (1, 1) and spec.padding == (0, 0) and spec.groups == 1:
        return "pointwise"
    if spec.kernel == spec.stride and spec.padding == (0, 0) and spec.dilation == (1, 1) and spec.groups == 1:
        # a window that does not fit the block reads its neighbours through the table instead
        return "table" if r is not None and r % spec.stride[0] else "patchify"
    if spec.is_depthwise:
        return "depthwise"
    return "table"


def depthwise_kernel_name(implementation: str) -> str:
    """'depthwise-tiles' → 'tiles': the name kernels/depthwise.py knows it by."""
    return implementation[len(DEPTHWISE_PREFIX):]


def depthwise_request(name: str) -> str:
    """A user's depthwise choice ('auto', 'tiles' or 'depthwise-tiles', …) as a request to the router."""
    impls = KIND_IMPLEMENTATIONS["depthwise"]
    full = name if name == "auto" or name.startswith(DEPTHWISE_PREFIX) else DEPTHWISE_PREFIX + name
    if full != "auto" and full not in impls:
        raise ValueError(f"unknown depthwise implementation {name!r}; choose one of auto, "
                         f"{', '.join(depthwise_kernel_name(i) for i in impls)} (or their full names, {impls[0]!r}, …)")
    return full


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unsupported(implementation: str, spec: ConvSpec, r: int, device: torch.device,
                dtype: torch.dtype) -> Optional[str]:
    """Why ``implementation`` cannot run this layer here (None when it can)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    kind = layer_kind(spec, r)
    if implementation not in KIND_IMPLEMENTATIONS[kind]:
        return f"'{implementation}' does not run {kind} convs"
    if implementation == "tiles":
        return tiles_unsupported(spec, r)
    if implementation == "spconv":
        if not spconv_available():
            return "spconv is not installed"
        return spconv_unsupported(spec, device, dtype)
    if kind == "depthwise":
        why = dw.why_unsupported(depthwise_kernel_name(implementation), spec)
        if why is not None:
            return why
        if implementation == "depthwise-triton":
            if not triton_available():
                return "needs the triton package (pip install triton)"
            if dtype == torch.float64:
                return "the Triton kernels accumulate in fp32, so they cannot compute fp64"
            if device.type != "cuda" and not _triton_interpreted():
                return "the Triton kernels need a GPU (on the CPU they run only in Triton's interpreter)"
    return None


def candidates(spec: ConvSpec, r: int, device: torch.device, dtype: torch.dtype) -> List[str]:
    """The implementations measured routing times for this layer: those that can run it here, less
    those that would only repeat another one: ``spconv`` where its own kernels do not run (the CPU,
    fp64: its rulebook then feeds the same gather-GEMM as ``torch``) and ``depthwise-triton`` off
    the GPU (Triton's interpreter, for tests)."""
    out = []
    for impl in KIND_IMPLEMENTATIONS[layer_kind(spec, r)]:
        if impl == "spconv" and not native_kernels_usable(device, dtype):
            continue
        if impl == "depthwise-triton" and device.type != "cuda":
            continue
        if unsupported(impl, spec, r, device, dtype) is None:
            out.append(impl)
    return out


def label(implementation: str) -> str:
    """Short label for tables: 'depthwise-tiles' → 'dw tiles', 'patchify' → 'patchify matmul'."""
    if implementation.startswith(DEPTHWISE_PREFIX):
        return "dw " + depthwise_kernel_name(implementation)
    return "patchify matmul" if implementation == "patchify" else implementation
