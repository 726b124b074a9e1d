"""Precision names (fp32, bf16, fp16) → torch dtypes, and mixed precision the way training runs it:
autocast on fp32 weights (the loss stays fp32). Training's ``--amp`` and the benchmarks' ``--dtypes``
read the names from here."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Optional, Union

import torch

from .choices import AMP_CHOICES, AMP_DTYPES, PRECISIONS
from .cpus import CPUINFO, cpu_flags

DTYPES = dict(zip(PRECISIONS, (torch.float32, torch.bfloat16, torch.float16)))
__all__ = ["AMP_CHOICES", "AMP_DTYPES", "DTYPES", "amp_dtype", "autocast", "cpu_has_native_bf16"]


def autocast(device: Union[str, torch.device], dtype: Union[str, torch.dtype, None]):
    """Autocast to ``dtype`` (a name of :data:`DTYPES` or a torch dtype) on ``device``'s type; nothing
    for fp32, None or 'off'."""
    if dtype is None or dtype == "off":
        return nullcontext()
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def cpu_has_native_bf16(cpuinfo: str = CPUINFO) -> bool:
    """True when the CPU multiplies bf16 natively (AVX-512 BF16 or AMX), where bf16 autocast pays."""
    return bool(cpu_flags(cpuinfo) & {"avx512_bf16", "amx_bf16"})


def amp_dtype(name: str, device: Union[str, torch.device]) -> Optional[str]:
    """Training's ``--amp`` choice as 'bf16', 'fp16' or None (off). auto: bf16 on CUDA GPUs that
    support it (else fp16); on the CPU bf16 only where it is native (the demo's loss curves in fp32
    and bf16 match there: README), else off."""
    if name not in AMP_CHOICES:
        raise ValueError(f"unknown amp {name!r}; choose one of {', '.join(AMP_CHOICES)}")
    if name == "auto":
        if torch.device(device).type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else None
    return None if name == "off" else name
