"""What a measured decision depends on besides the layer: the device, by name, and the libraries."""
from __future__ import annotations

import functools

import torch

from ..cpus import cpu_model


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
    """The device by name (a CPU with its family, model and vector units, ``cpus.cpu_model``, and the
    thread count) and the library versions."""
    if device.type == "cuda":
        name = f"cuda {torch.cuda.get_device_name(device)}"
    else:
        name = f"{device.type} {cpu_model() or 'unknown'}, {torch.get_num_threads()} threads"
    return f"{name} | {library_versions()}"
