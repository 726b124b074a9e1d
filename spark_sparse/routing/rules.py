"""The fixed rule table: how ``auto`` runs a layer with ``routing='fixed'`` (and where measured
routing has no measurement to go by).

Rules are tried top to bottom; the first one whose condition holds and whose implementation can
run the layer here wins. The thresholds come from measurements on this project's 2-core CPU,
recorded with their conditions in benchmarks/results/routing-rules.md. GPUs were not measured when
these rules were written: there measured routing (the default) decides.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from ..spec import ConvSpec
from .implementations import LayerSpec

# Table convs on the CPU: halo tiles beat the gather-GEMM from these patch block sizes r on
# (smaller blocks pay more halo than patch, and the dense kernels run inefficiently on tiny images).
TILES_MIN_R = 4
TILES_MIN_R_STRIDED = 8
# Depthwise convs: a 7×7 halo on a run of k patches costs (r + 6)(k·r + 6) / (k·r²) per site (2.1× at
# r = 8 and 3.4× at r = 4 for runs of 4, 7× at r = 2); below this block size the whole dense map
# (2.5× the active sites at mask ratio 0.6) is cheaper.
DEPTHWISE_TILES_MIN_R = 4
# 1×1 convs on the CPU in fp32: oneDNN's 1×1 conv beats the BLAS matmul (F.linear) from this many
# output rows on (2 cores: 5120 rows faster, 320 slower; kernels/rows_linear.py has the figures). In
# bf16 the two measured a tie, and oneDNN has no fp64 kernels, so both stay on the matmul.
ROWS_CONV_MIN = 4096
# oneDNN / cuDNN have fast kernels for these; fp64 convs fall back to slow native loops.
FAST_CONV_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Situation:
    """What a rule may look at: the layer, its input patch block r×r, the device and compute dtype,
    and the number of active sites of its input (None: not known)."""
    spec: LayerSpec
    r: int
    device: torch.device
    dtype: torch.dtype
    sites: Optional[int] = None


@dataclass(frozen=True)
class Rule:
    kind: str
    implementation: str
    when: Callable[[Situation], bool]
    reason: str  # formatted with the Situation's fields and this module's thresholds


def _always(s: Situation) -> bool:
    return True


def _cuda(s: Situation) -> bool:
    return s.device.type == "cuda"


def _slow_dtype(s: Situation) -> bool:
    return s.dtype not in FAST_CONV_DTYPES


def _tiles_block(s: Situation) -> bool:
    return s.r >= (TILES_MIN_R if s.spec.stride[0] == 1 else TILES_MIN_R_STRIDED)


def tall_rows(spec: LayerSpec, sites: Optional[int]) -> Optional[bool]:
    """What the rules read of a layer's active input sites: for a 1×1 conv whether its output has at
    least ROWS_CONV_MIN rows (None for other layers, or when not known). Route lookups key on this,
    not on the count, which user-drawn masks change on every call."""
    if sites is None or not isinstance(spec, ConvSpec) or spec.kernel != (1, 1):
        return None
    return sites // (spec.stride[0] * spec.stride[1]) >= ROWS_CONV_MIN


def _tall_fp32_rows_on_cpu(s: Situation) -> bool:
    return s.device.type == "cpu" and s.dtype == torch.float32 and bool(tall_rows(s.spec, s.sites))


RULES: Tuple[Rule, ...] = (
    Rule("pointwise", "pointwise-conv", _tall_fp32_rows_on_cpu,
         "1×1 conv on ≥ {ROWS_CONV_MIN} fp32 rows on the CPU: oneDNN's 1×1 conv beats the BLAS matmul"),
    Rule("pointwise", "matmul", _always, "1×1 conv: one matmul on the active rows"),
    Rule("patchify", "patchify", _always, "kernel = stride: a reshape of each patch's block and one matmul"),
    Rule("table", "spconv", _cuda, "CUDA: spconv's kernels"),
    Rule("table", "torch", _cuda, "CUDA without spconv's kernels for this layer: the gather-GEMM"),
    Rule("table", "torch", _slow_dtype, "{dtype}: the CPU has no fast convolution kernels for it, the gather-GEMM"),
    Rule("table", "tiles", _tiles_block,
         "patch blocks of {r}×{r} sites (≥ {TILES_MIN_R}, strided ≥ {TILES_MIN_R_STRIDED}): halo tiles beat "
         "the gather-GEMM"),
    Rule("table", "torch", _always, "patch blocks of {r}×{r} sites: halo tiles would outweigh the patch, "
                                    "the gather-GEMM"),
    Rule("depthwise", "depthwise-table", _slow_dtype, "{dtype}: no fast depthwise kernels, the table twin"),
    Rule("depthwise", "depthwise-tiles", lambda s: s.r >= DEPTHWISE_TILES_MIN_R,
         "patch blocks of {r}×{r} sites (≥ {DEPTHWISE_TILES_MIN_R}): halo tiles and the dense depthwise conv"),
    Rule("depthwise", "depthwise-dense", _always,
         "patch blocks of {r}×{r} sites: the dense map costs less than halo tiles"),
    Rule("depthwise", "depthwise-table", _always, "only the table kernels run this depthwise conv"),
    Rule("maxpool", "maxpool-tiles", _always, "the window splits into the patch blocks: one dense max-pool "
                                              "per tile shape"),
    Rule("maxpool", "maxpool-table", _always, "the max over each window's rows"),
)


def describe(rule: Rule, situation: Situation) -> str:
    return rule.reason.format(r=situation.r, dtype=str(situation.dtype).replace("torch.", ""),
                              TILES_MIN_R=TILES_MIN_R, TILES_MIN_R_STRIDED=TILES_MIN_R_STRIDED,
                              DEPTHWISE_TILES_MIN_R=DEPTHWISE_TILES_MIN_R, ROWS_CONV_MIN=ROWS_CONV_MIN)
