"""Sparse depthwise k×k convolution (ConvNeXt's 7×7), in four implementations with one meaning.

Outputs at the active sites, inputs from active sites, masked neighbours and the image border read
as zero, as a dense zero-padded conv on the masked map reads them. Bias is not applied here (the
layer adds it).

- ``table``  — the semantic twin: a K-term weighted sum per channel over the geometry's neighbour
  table, in plain PyTorch; backward through the inverse table (no scatter-add). Any stride.
- ``tiles``  — gather each visible patch with a k//2 halo (kernels/tiles.py) and run the dense
  depthwise conv (oneDNN / cuDNN, channels-last, no padding) on the batch of tiles.
- ``dense``  — scatter to the dense (B, C, H, W) map (zeros at masked sites; channels-last memory,
  as oneDNN's depthwise backward is many times slower on NCHW), dense depthwise conv, gather the
  active sites. Costs the full map, which at strides 8 to 32 is smaller than the tiles' halos.
- ``triton`` — Triton kernels on the neighbour table (kernels/depthwise_triton.py), for GPUs; on
  CPU tensors they run in Triton's interpreter (tests only).

``impl="auto"`` picks per layer from the device and the patch block size r (see ``choose_impl``).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..features import SparseFeatures
from ..geometry import ConvTable
from ..spec import ConvSpec, compute_dtype
from .depthwise_table import table_depthwise
from .tiles import gather_tiles, tiles_to_features

IMPLS = ("auto", "table", "tiles", "dense", "triton")


def _conv_table(x: SparseFeatures, spec: ConvSpec) -> ConvTable:
    return x.geometry.conv_table(x.stride, spec.kernel, spec.stride, spec.padding, spec.dilation)


def _via_table(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    return table_depthwise(x.features, weight, _conv_table(x, spec))


def _via_tiles(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    tiles = gather_tiles(x, spec.padding[0])
    y = F.conv2d(tiles, weight, None, 1, 0, spec.dilation, spec.groups)
    return tiles_to_features(y)


def _via_dense(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    dense = x.dense(memory_format=torch.channels_last)
    y = F.conv2d(dense, weight, None, 1, spec.padding, spec.dilation, spec.groups)  # channels-last in and out
    return SparseFeatures.from_dense(y, x.geometry, x.stride).features


def _via_triton(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    from .depthwise_triton import triton_depthwise
    return triton_depthwise(x.features, weight, _conv_table(x, spec))


_RUN = {"table": _via_table, "tiles": _via_tiles, "dense": _via_dense, "triton": _via_triton}


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def why_unsupported(impl: str, spec: ConvSpec) -> str | None:
    """Why ``impl`` cannot run ``spec`` (None when it can)."""
    if not spec.is_depthwise:
        return f"not a depthwise convolution (groups={spec.groups}, channels {spec.in_channels}→{spec.out_channels})"
    if impl in ("tiles", "dense"):
        same = all(p == d * (k - 1) // 2 and k % 2 == 1 for k, p, d in zip(spec.kernel, spec.padding, spec.dilation))
        if spec.stride != (1, 1) or not same or spec.padding[0] != spec.padding[1]:
            return (f"'{impl}' needs stride 1 and 'same' padding equal on both axes (got kernel {spec.kernel}, "
                    f"stride {spec.stride}, padding {spec.padding}, dilation {spec.dilation})")
    if impl == "triton" and not triton_available():
        return "'triton' needs the triton package (pip install triton)"
    return None


# oneDNN / cuDNN have fast depthwise kernels for these; fp64 falls back to a per-channel slow conv.
FAST_CONV_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Halo tiles pay (r + 2h)² / r² sites per site: 3.1x at r = 8, 6.3x at r = 4, 16x at r = 2, 49x at r = 1
# for a 7×7 kernel. Below this block size the dense map (which at 60 % masking is 2.5x the active
# sites) is cheaper.
TILES_MIN_R = 8


def choose_impl(spec: ConvSpec, r: int, device: torch.device, dtype: torch.dtype) -> str:
    """The implementation ``auto`` runs for one layer, from its patch block size ``r`` = patch/stride.

    Measured on this project's CPU with benchmarks/depthwise_select.py (ConvNeXt-T widths, 224²,
    batch 8, mask ratio 0.6, fwd+bwd, median of 15, CPU time of 1 thread — the 2 cores were shared
    with other jobs, so wall-clock figures swung by 2-3x between runs; ms):

        stride (r)  C    masked-dense  table  tiles  dense
        4 (8)       96   109           405    94     104     → tiles
        8 (4)       192  40            111    52     44      → dense
        16 (2)      384  30            78     50     44      → dense
        32 (1)      768  20            35     168    27      → dense

    Two more runs (7 repeats) agreed on tiles at stride 4 and dense at 16 and 32; at stride 8 dense
    and tiles swapped places within 10 %. So: tiles for r >= 8, the dense map below. Tiles beat
    channels-last masked-dense at stride 4 only by ~10-15 % here (an earlier "~4x" estimate was
    against NCHW masked-dense, whose depthwise backward is slow on CPU).

    CUDA: not measured yet (no GPU in this project so far); the same rule runs cuDNN's depthwise
    kernels. The Triton kernels are opt-in (``impl='triton'`` / ``encoder.set_depthwise('triton')``)
    until ``depthwise_select --device cuda`` says where they win. fp64 runs the table twin.
    """
    if why_unsupported("tiles", spec) is not None or dtype not in FAST_CONV_DTYPES:
        return "table"
    return "tiles" if r >= TILES_MIN_R else "dense"


def sparse_depthwise_conv(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec, impl: str = "auto") -> torch.Tensor:
    """Depthwise conv of ``x`` with a dense-layout weight (C, 1, kh, kw) → (N_out, C), no bias.

    ``impl``: 'auto' (per layer, see ``choose_impl``), 'table', 'tiles', 'dense' or 'triton'.
    Runs in the autocast dtype when autocast is on.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown depthwise implementation {impl!r}; choose one of {', '.join(IMPLS)}")
    if impl == "auto":
        impl = choose_impl(spec, x.level.r, x.features.device, compute_dtype(x.features))
    reason = why_unsupported(impl, spec)
    if reason is not None:
        raise ValueError(f"depthwise implementation {impl!r} cannot run this layer: {reason}")
    dtype = compute_dtype(x.features)
    x = x.replace(x.features.to(dtype))
    return _RUN[impl](x, weight.to(dtype), spec)
