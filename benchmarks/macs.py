"""Exact multiply-accumulates of each contender, and the ideal speed-up they imply.

Encoder: the sparse encoder is counted from the sites it really computes
(:func:`spark_sparse.flops.sparse_macs`); masked-dense and plain dense both run every conv on
the whole image (:func:`spark_sparse.flops.dense_macs`; masking adds multiplies, not MACs).
Whole step (forward): encoder + head, where the head (densify + decoder) is dense and the same
for every contender: measured once as (masked-dense step MACs) − (dense encoder MACs).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from spark_sparse.flops import dense_macs, sparse_macs


def ideal_ratio(visible: torch.Tensor) -> float:
    """1 / (visible fraction): the most a cost proportional to the active sites can gain."""
    kept = int(visible.sum())
    if kept == 0:
        raise ValueError("no visible patch in the batch")
    return visible.numel() / kept


def dense_encoder_macs(model: nn.Module, batch: int, image_size: Tuple[int, int]) -> int:
    """Dense encoder MACs of a batch: one image counted, times the batch (convs are linear in it)."""
    return dense_macs(model, 1, image_size) * batch


def encoder_macs(sparse_encoder: nn.Module, visible: torch.Tensor, dense: int) -> Dict[str, int]:
    sparse = sparse_macs(sparse_encoder, visible)["total"]
    return {"sparse": int(sparse), "masked-dense": int(dense), "dense": int(dense)}


def step_macs(encoder: Dict[str, int], head: Optional[int]) -> Optional[Dict[str, int]]:
    if head is None:
        return None
    return {name: macs + head for name, macs in encoder.items()}


def mac_ratio(macs: Dict[str, int], base: str = "masked-dense") -> float:
    return macs[base] / max(macs["sparse"], 1)
