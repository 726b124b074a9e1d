"""The device a command or a training process runs on, from its ``--device`` option."""
from __future__ import annotations

import torch


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``name`` (auto, cpu, cuda, cuda:N) as a torch device, made current when it is a GPU; 'auto' is
    the GPU when there is one, and a bare 'cuda' is GPU ``local_rank`` (torchrun's LOCAL_RANK).
    ValueError for a name torch does not know, or CUDA where torch sees no GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r}: not a device name; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available here (torch {torch.__version__} sees no GPU); "
                             f"use --device cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device
