"""Whether the Triton kernels can run, asked without importing them: the one probe the router
(spark_sparse/routing/) and the kernels (kernels/depthwise_triton.py) both use."""
from __future__ import annotations

import functools
import os

import torch


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a build that cannot load here
        return False
    return True


def triton_interpreted() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``): how they run on CPU
    tensors (tests)."""
    try:
        from triton import knobs
    except ImportError:  # releases before triton.knobs read the environment variable
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return bool(knobs.runtime.interpret)


def triton_unsupported(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device`` (None when they can)."""
    if not triton_available():
        return "needs the triton package (pip install triton)"
    if device.type != "cuda" and not triton_interpreted():
        return ("the Triton kernels need a GPU; on the CPU they run only in Triton's interpreter: set "
                "TRITON_INTERPRET=1 before triton is first imported")
    return None
