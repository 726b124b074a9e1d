"""DropPath with one keep/drop draw per image, applied to all of that image's sites."""
from __future__ import annotations

from ..features import SparseFeatures
from .base import SparseModule


class SparseDropPath(SparseModule):
    """Stochastic depth per image.

    It draws B values from the global RNG, with the dtype and device of the features, exactly as
    timm's ``DropPath`` does on the dense (B, C, H, W) map: the same seed gives the same draws.
    """

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def extra_repr(self) -> str:
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"

    def forward(self, x: SparseFeatures) -> SparseFeatures:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        keep = x.features.new_empty(x.geometry.batch).bernoulli_(keep_prob)
        if keep_prob > 0.0 and self.scale_by_keep:
            keep.div_(keep_prob)
        return x.replace(x.features * keep[x.level.batch_index].unsqueeze(1))

    @classmethod
    def from_dense(cls, module) -> "SparseDropPath":
        return cls(float(module.drop_prob), bool(getattr(module, "scale_by_keep", True)))
