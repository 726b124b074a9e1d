"""What a measured decision depends on besides the layer: the device, by name, and the libraries."""
from __future__ import annotations

import functools
import platform

import torch


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str:
    """An installed distribution's version without importing it (spconv's CUDA builds have suffixes)."""
    from importlib import metadata
    for name in (distribution, *(f"{distribution}-cu{v}" for v in (126, 124, 121, 120, 118))):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "none"


@functools.lru_cache(maxsize=None)
def library_versions() -> str:
    return f"torch {torch.__version__}, spconv {_version('spconv')}, triton {_version('triton')}"


def environment_key(device: torch.device) -> str:
    """The device by name (on the CPU with the thread count) and the library versions."""
    if device.type == "cuda":
        name = f"cuda {torch.cuda.get_device_name(device)}"
    else:
        name = f"{device.type} {cpu_model() or 'unknown'}, {torch.get_num_threads()} threads"
    return f"{name} | {library_versions()}"
