"""How fast a step (or an encoder's forward+backward) could be on this device: its MACs at the
device's dense-convolution peak.

Forward MACs are counted exactly (macs.py); the backward does about twice as many (input and weight
gradients). Timed on the same device, a large channels-last 3×3 convolution (forward only, best of
several runs) gives the best rate this torch reaches on dense convolutions, the work that makes up
a SparK step, so ``3 × forward MACs / peak`` is the time at that rate (its floor, in practice) and
``published ms / floor`` the most a contender could gain over SparK as published without computing
less. A target above that ceiling cannot be met here; one below it says how much of the peak the
step must reach, and an encoder's share of the peak says whether a gap to its FLOP ideal is in the
MACs or in the rate they run at.
"""
from __future__ import annotations

import time
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from spark_sparse.precision import autocast

BACKWARD_FACTOR = 2  # the backward's MACs per forward MAC: input gradient + weight gradient
PEAK_SHAPE = (16, 256, 28, 28)  # batch, channels, height, width: 3.7 GMACs, a shape oneDNN / cuDNN run at full rate


def conv_peak_gmacs(device: torch.device, amp_dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """The device's dense 3×3 convolution rate in GMAC/s (best of ``repeats`` after one warm-up)."""
    n, c, h, w = PEAK_SHAPE
    g = torch.Generator().manual_seed(0)
    x = torch.randn(PEAK_SHAPE, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(c, c, 3, 3, generator=g) * 0.02).to(device).contiguous(memory_format=torch.channels_last)
    macs = n * h * w * c * c * 9
    best = float("inf")
    with torch.no_grad(), autocast(device, amp_dtype):
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            F.conv2d(x, weight, padding=1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                best = min(best, time.perf_counter() - start)
    return macs / best / 1e9


def floor_ms(forward_macs: Optional[int], peak_gmacs: Optional[float]) -> Optional[float]:
    """The time of a forward and its backward if every MAC ran at the peak rate."""
    if not forward_macs or not peak_gmacs:
        return None
    return (1 + BACKWARD_FACTOR) * forward_macs / (peak_gmacs * 1e9) * 1e3


def peaks_for(device: torch.device, amps) -> Dict[str, float]:
    """The peak per autocast dtype name used by the step contenders ('fp32', 'bf16', 'fp16')."""
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    peaks = {}
    for name in sorted(set(amps)):
        try:
            peaks[name] = conv_peak_gmacs(device, dtypes[name])
        except (KeyError, RuntimeError):  # a dtype this device cannot convolve in: no floor for it
            pass
    return peaks
