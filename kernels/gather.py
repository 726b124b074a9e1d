"""Row gathers with a sentinel index: the one primitive every index-table kernel is built on."""
from __future__ import annotations

import torch


def gather_rows(x: torch.Tensor, index: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """``x[index]`` for an index whose entry ``len(x)`` means "a row of ``fill``"; → (*index.shape, C).

    Tables mark masked or out-of-image neighbours with that sentinel, so a kernel never branches
    on them: it reads a row of zeros (or −inf for max-pooling).
    """
    pad = x.new_full((1, x.shape[1]), fill)
    return torch.cat([x, pad]).index_select(0, index.reshape(-1)).view(*index.shape, x.shape[1])
