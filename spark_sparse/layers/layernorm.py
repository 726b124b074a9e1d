"""LayerNorm over channels, per site: the sparse twin of timm's channels-first ``LayerNorm2d``.

A channels-last ``nn.LayerNorm`` already runs unchanged on the (N, C) feature matrix; the
channels-first one permutes a 4-D map, so it gets this twin with the same parameters. Masked
sites are never normalised (the reference re-masks them: LN of a zero site would be its bias).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..features import SparseFeatures
from .base import SparseModule


class SparseLayerNorm(nn.LayerNorm, SparseModule):
    """``F.layer_norm`` over the channels of each active site; parameters those of ``nn.LayerNorm``."""

    def forward(self, x: SparseFeatures) -> SparseFeatures:  # type: ignore[override]
        return x.replace(F.layer_norm(x.features, self.normalized_shape, self.weight, self.bias, self.eps))

    @classmethod
    def from_dense(cls, norm: nn.LayerNorm) -> "SparseLayerNorm":
        w = norm.weight
        factory = {"device": w.device, "dtype": w.dtype} if w is not None else {}
        sparse = cls(norm.normalized_shape, eps=norm.eps, elementwise_affine=norm.elementwise_affine,
                     bias=norm.bias is not None, **factory)
        sparse.load_state_dict(norm.state_dict())
        return sparse
