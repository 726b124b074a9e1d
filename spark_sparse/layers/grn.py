"""Global Response Normalization (ConvNeXt V2) on active sites, one statistic per image.

timm's ``GlobalResponseNorm`` computes, per image and channel, the L2 norm over all spatial
positions, divides it by its mean over channels, and returns ``x + bias + weight · x · x_n``. In
SparK's masked-dense model the masked sites hold zeros, so that norm is the norm over the image's
*active* sites: here a per-image sum of squares over that image's rows (never over the batch).
"""
from __future__ import annotations

import torch
from torch import nn

from ..features import SparseFeatures
from .base import SparseModule


def per_image_norm(x: SparseFeatures) -> torch.Tensor:
    """(B, C) L2 norm of each image's active sites, accumulated in at least fp32.

    An image with no active site (or a channel of exact zeros) gets 0, with the zero subgradient
    ``torch.linalg.vector_norm`` uses there (a plain sqrt would give NaN gradients).
    """
    feats = x.features
    acc = torch.promote_types(feats.dtype, torch.float32)
    squares = feats.to(acc).square()
    sums = squares.new_zeros(x.geometry.batch, feats.shape[1]).index_add(0, x.level.batch_index, squares)
    positive = sums > 0
    return torch.where(positive, sums.where(positive, torch.ones_like(sums)).sqrt(), torch.zeros_like(sums))


class SparseGlobalResponseNorm(SparseModule):
    """GRN with per-image statistics over active sites; parameters (``weight``, ``bias``) as timm's."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: SparseFeatures) -> SparseFeatures:
        norm = per_image_norm(x)
        scale = norm / (norm.mean(dim=1, keepdim=True) + self.eps)
        feats = x.features
        return x.replace(feats + torch.addcmul(self.bias, self.weight, feats * scale[x.level.batch_index]))

    @classmethod
    def from_dense(cls, grn: nn.Module) -> "SparseGlobalResponseNorm":
        sparse = cls(grn.weight.shape[0], eps=grn.eps).to(grn.weight)
        sparse.load_state_dict(grn.state_dict())
        return sparse
