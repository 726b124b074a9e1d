"""Row gathers with sentinel indices: the one primitive every index-table kernel is built on."""
from __future__ import annotations

from typing import Sequence

import torch


def with_fill_rows(x: torch.Tensor, fills: Sequence[float] = (0.0,)) -> torch.Tensor:
    """``x`` (N, C) with one row per fill appended: rows ``N``, ``N + 1``, … read ``fills[0]``,
    ``fills[1]``, … (for a kernel that gathers from the same rows many times)."""
    return torch.cat([x, *(x.new_full((1, x.shape[1]), f) for f in fills)])


def gather_rows(x: torch.Tensor, index: torch.Tensor, fills: Sequence[float] = (0.0,)) -> torch.Tensor:
    """``x[index]`` → (*index.shape, C), where the sentinel index ``len(x) + i`` reads a row of
    ``fills[i]``.

    Tables mark masked or out-of-image neighbours with these sentinels, so a kernel never branches
    on them: it reads a row of zeros (masked neighbours) or −inf (the image border of a max-pool).
    """
    return take_rows(with_fill_rows(x, fills), index)


def take_rows(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``rows[index]`` → (*index.shape, C): the gather of rows that already end in their fill rows
    (:func:`with_fill_rows`)."""
    return rows.index_select(0, index.reshape(-1)).view(*index.shape, rows.shape[1])
