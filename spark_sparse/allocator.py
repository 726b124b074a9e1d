"""Keep freed memory for reuse: glibc's malloc without mmap for large blocks and without trimming
(``pretrain`` on the CPU by default, ``bench --keep-freed-memory``).

A training step frees and allocates the same large tensors every step. glibc serves blocks above its
mmap threshold (at most 32 MB) with a fresh mmap and returns them to the kernel on free, so a step
pays page faults to map and zero them again; told to keep freed blocks in its heap (``mallopt``: no
mmap, no trimming), malloc hands the same memory back. How much that matters depends on the step,
measured on this project's 2-core CPU:
- the no-argument ``pretrain`` (ResNet-18, 96 px, LAMB, bf16) ran 9–20 % more images/s in four
  paired runs, mostly in LAMB's update and the casts of the widest decoder weights, with the same
  losses; so ``pretrain`` keeps freed memory on the CPU unless told ``--no-keep-freed-memory``;
- resnet50 at batch 16, 224²: SparK-as-published's step (masked-dense encoder, full-resolution
  tensors everywhere) ran 10.8 s instead of 13.8 s, while this project's sparse step stayed at
  8.1 s. The benchmark therefore measures every contender under the same malloc and lets the user
  choose which.
The cost is that the process keeps its peak heap for its lifetime (a training run does anyway).
Only glibc has these settings; elsewhere nothing changes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Optional

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's malloc.h
_INT_MAX = 2 ** 31 - 1
_state: Optional[str] = None


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> str:
    """Ask glibc to keep freed blocks for reuse (once per process); says what was done."""
    global _state
    if _state is None:
        libc = _glibc()
        if libc is None:
            _state = "left as it is (not glibc)"
        elif libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1:
            _state = "freed memory kept for reuse (glibc: no mmap, no trim)"
        else:
            _state = "left as it is (glibc refused the settings)"
    return _state


def malloc_setting() -> str:
    """What this process's malloc does with freed memory, in words (for reports)."""
    return _state or "as the system set it"
