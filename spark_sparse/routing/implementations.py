"""Every way a sparse layer can run, in one name space: its name, the function that runs it, and
what it can run.

A conv layer is one of four kinds (its shape, and for patchify convs the patch block it reads), and
a max-pool a fifth:
- ``pointwise`` 1×1 convs → ``matmul`` (``F.linear`` on the (N, C) rows; a strided one first picks
  each output's top-left child), ``pointwise-conv`` (the same rows as a 1×1 convolution: oneDNN /
  cuDNN instead of the BLAS);
- ``patchify`` kernel == stride, no padding, on blocks the stride divides → ``patchify`` (a reshape
  of each patch's block and one matmul);
- ``depthwise`` k×k convs → ``depthwise-table`` (the plain-PyTorch twin on neighbour tables),
  ``depthwise-tiles`` (halo tiles + the dense depthwise conv), ``depthwise-dense`` (the whole dense
  map), ``depthwise-triton`` (Triton kernels on the neighbour tables);
- ``table``: any other k×k conv → ``torch`` (gather → GEMM on index tables), ``gather-conv`` (the same,
  its forward and input-gradient GEMMs as oneDNN's / cuDNN's 1×1 convs), ``tiles`` (halo tiles + the
  dense conv of oneDNN / cuDNN), ``spconv`` (spconv's rulebooks and CUDA kernels);
- ``maxpool`` → ``maxpool-tiles`` (halo tiles + the dense max-pool), ``maxpool-table`` (the max over
  each window's rows).
``RUN`` maps each name to its function; ``unsupported`` says why one cannot run a layer, asking the
code that runs it (kernels/, backends/), so a route never names an implementation that cannot run
the layer.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

from ..backends import spconv_available
from ..backends.rulebook import gather_conv, torch_conv
from ..backends.spconv_backend import native_kernels_usable, spconv_conv, spconv_unsupported
from ..features import SparseFeatures
from ..kernels import depthwise as dw
from ..kernels.max_pool import PoolSpec, table_max_pool, tiles_max_pool
from ..kernels.rows_linear import patchify_matmul, pointwise_conv, pointwise_matmul
from ..kernels.tile_conv import tile_conv, tiles_unsupported
from ..kernels.triton_support import triton_unsupported
from ..spec import ConvSpec, compute_dtype

LayerSpec = Union[ConvSpec, PoolSpec]

KIND_IMPLEMENTATIONS: Dict[str, Tuple[str, ...]] = {
    "pointwise": ("matmul", "pointwise-conv"),
    "patchify": ("patchify",),
    "table": ("torch", "gather-conv", "tiles", "spconv"),
    "depthwise": ("depthwise-table", "depthwise-tiles", "depthwise-dense", "depthwise-triton"),
    "maxpool": ("maxpool-tiles", "maxpool-table"),
}
IMPLEMENTATIONS: Tuple[str, ...] = tuple(i for impls in KIND_IMPLEMENTATIONS.values() for i in impls)
DEPTHWISE_PREFIX = "depthwise-"


def _plus_bias(conv: Callable[[SparseFeatures, torch.Tensor, ConvSpec], torch.Tensor]):
    """A conv function that leaves the bias out, with the bias added after it."""
    def run(x: SparseFeatures, weight: torch.Tensor, bias: Optional[torch.Tensor], spec: ConvSpec) -> torch.Tensor:
        out = conv(x, weight, spec)
        return out if bias is None else out + bias.to(out.dtype)
    run.__name__ = conv.__name__
    return run


# name → function. Convs: (x, dense-layout weight, bias or None, ConvSpec) → (N_out, C_out) with the
# bias added; max-pools: (x, PoolSpec) → (N_out, C).
RUN: Dict[str, Callable[..., torch.Tensor]] = {
    "matmul": pointwise_matmul,
    "pointwise-conv": pointwise_conv,
    "patchify": patchify_matmul,
    "torch": _plus_bias(torch_conv),
    "gather-conv": _plus_bias(gather_conv),
    "tiles": _plus_bias(tile_conv),
    "spconv": _plus_bias(spconv_conv),
    "depthwise-table": _plus_bias(dw.depthwise_table),
    "depthwise-tiles": _plus_bias(dw.depthwise_tiles),
    "depthwise-dense": _plus_bias(dw.depthwise_dense),
    "depthwise-triton": _plus_bias(dw.depthwise_triton),
    "maxpool-tiles": tiles_max_pool,
    "maxpool-table": table_max_pool,
}
assert set(RUN) == set(IMPLEMENTATIONS)


def compute(implementation: str, x: SparseFeatures, *args) -> torch.Tensor:
    """Run the layer on ``x`` with ``implementation``: ``compute(name, x, weight, bias, spec)`` for a
    conv, ``compute(name, x, pool_spec)`` for a max-pool (see ``RUN``); ValueError where that
    implementation cannot run it. (Routed layers call ``RUN`` directly: their route has checked.)"""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    why = _cannot_run(implementation, args[-1], x.level.r, x.features.device, compute_dtype(x.features))
    if why is not None:
        raise ValueError(f"{implementation} cannot run this layer: {why}")
    return RUN[implementation](x, *args)


def layer_kind(spec: LayerSpec, r: Optional[int] = None) -> str:
    """Which of the five kinds ``spec`` is on input patch blocks of r×r sites (None: any block)."""
    if isinstance(spec, PoolSpec):
        return "maxpool"
    if spec.kernel == (1, 1) and spec.padding == (0, 0) and spec.groups == 1:
        return "pointwise"
    if spec.kernel == spec.stride and spec.padding == (0, 0) and spec.dilation == (1, 1) and spec.groups == 1:
        # a window that does not fit the block reads its neighbours through the table instead
        return "table" if r is not None and r % spec.stride[0] else "patchify"
    if spec.is_depthwise:
        return "depthwise"
    return "table"


def depthwise_request(name: str) -> str:
    """A user's depthwise choice ('auto', 'tiles' or 'depthwise-tiles', …) as a request to the router."""
    impls = KIND_IMPLEMENTATIONS["depthwise"]
    full = name if name == "auto" or name.startswith(DEPTHWISE_PREFIX) else DEPTHWISE_PREFIX + name
    if full != "auto" and full not in impls:
        raise ValueError(f"unknown depthwise implementation {name!r}; choose one of auto, "
                         f"{', '.join(i[len(DEPTHWISE_PREFIX):] for i in impls)} (or their full names, "
                         f"{impls[0]!r}, …)")
    return full


def unsupported(implementation: str, spec: LayerSpec, r: int, device: torch.device,
                dtype: torch.dtype) -> Optional[str]:
    """Why ``implementation`` cannot run this layer here (None when it can): the one answer to that
    question in the package."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    kind = layer_kind(spec, r)
    if implementation not in KIND_IMPLEMENTATIONS[kind]:
        return f"'{implementation}' does not run {kind} {'layers' if kind == 'maxpool' else 'convs'}"
    return _cannot_run(implementation, spec, r, device, dtype)


def _cannot_run(implementation: str, spec: LayerSpec, r: int, device: torch.device,
                dtype: torch.dtype) -> Optional[str]:
    """Why ``implementation``'s code cannot compute this layer here, whatever kind the router files it
    under (tiles can run a patchify conv, for instance); None when it can."""
    if implementation in ("tiles", "maxpool-tiles"):
        return tiles_unsupported(spec, r)
    if implementation in ("torch", "gather-conv") and spec.groups != 1:
        return "the gather-GEMM runs groups=1 convs only"
    if implementation == "spconv":
        if not spconv_available():
            return "spconv is not installed"
        return spconv_unsupported(spec, device, dtype)
    if implementation in ("depthwise-tiles", "depthwise-dense"):
        return dw.same_padding_unsupported(spec)
    if implementation == "depthwise-triton":
        if dtype == torch.float64:
            return "the Triton kernels accumulate in fp32, so they cannot compute fp64"
        return triton_unsupported(device)
    return None


def candidates(spec: LayerSpec, r: int, device: torch.device, dtype: torch.dtype) -> List[str]:
    """The implementations measured routing times for this layer: those that can run it here, less
    those that would only repeat another one or cannot be faster: ``spconv`` where its own kernels do
    not run (the CPU, fp64: its rulebook then feeds the same gather-GEMM as ``torch``),
    ``depthwise-triton`` off the GPU (Triton's interpreter, for tests) and ``gather-conv`` on the CPU
    other than in fp32 (torch runs bf16 matmuls in oneDNN already; oneDNN has no fp64 kernels)."""
    out = []
    for impl in KIND_IMPLEMENTATIONS[layer_kind(spec, r)]:
        if impl == "spconv" and not native_kernels_usable(device, dtype):
            continue
        if impl == "depthwise-triton" and device.type != "cuda":
            continue
        if impl == "gather-conv" and device.type == "cpu" and dtype != torch.float32:
            continue
        if unsupported(impl, spec, r, device, dtype) is None:
            out.append(impl)
    return out


def label(implementation: str) -> str:
    """Short label for tables: 'depthwise-tiles' → 'dw tiles', 'patchify' → 'patchify matmul'."""
    if implementation.startswith(DEPTHWISE_PREFIX):
        return "dw " + implementation[len(DEPTHWISE_PREFIX):]
    return {"patchify": "patchify matmul", "pointwise-conv": "matmul as conv"}.get(implementation, implementation)
