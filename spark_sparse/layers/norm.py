"""BatchNorm over the active sites only: BatchNorm1d semantics on the (N, C) feature matrix."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..features import SparseFeatures
from .base import SparseModule


class SparseBatchNorm2d(_BatchNorm, SparseModule):
    """Statistics and running-stat updates from active sites only (masked sites never seen).

    Parameters and buffers are those of ``nn.BatchNorm2d``, so state dicts move unchanged.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 2:
            raise ValueError(f"expected (N, C) features, got shape {tuple(input.shape)}")

    def forward(self, x: SparseFeatures) -> SparseFeatures:  # type: ignore[override]
        # No active site at all (every patch of every image masked): as SparK's own BatchNorm1d on the
        # empty active set, the output is empty, the gradients zero and the running statistics untouched.
        # One single site cannot give a variance: torch's BatchNorm refuses it, as in SparK.
        if self.training and x.features.shape[0] == 1:
            raise ValueError("BatchNorm in train mode needs at least 2 active sites; the batch has 1 at stride "
                             f"{x.stride}: use a larger batch or a lower mask ratio")
        return x.replace(super().forward(x.features))

    @classmethod
    def from_dense(cls, bn: nn.BatchNorm2d) -> "SparseBatchNorm2d":
        like = bn.weight if bn.affine else bn.running_mean
        factory = {"device": like.device, "dtype": like.dtype} if like is not None else {}
        sparse = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                     track_running_stats=bn.track_running_stats, **factory)
        sparse.load_state_dict(bn.state_dict())
        return sparse.train(bn.training)
