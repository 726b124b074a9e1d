"""BatchNorm over the active sites only: BatchNorm1d semantics on the (N, C) feature matrix, and
the one routine that computes batch statistics over active sites of a dense map, in one process or
across a process group (the masked-dense reference, the densify norm, SparseSyncBatchNorm).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_reduce
from torch.nn.modules.batchnorm import _BatchNorm

from ..features import SparseFeatures
from .base import SparseModule


def _world(group) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _sum(t: torch.Tensor, group) -> torch.Tensor:
    """Sum over the processes of ``group`` (a differentiable all-reduce), or ``t`` in one process."""
    return all_reduce(t, op=dist.ReduceOp.SUM, group=group) if _world(group) > 1 else t


def batch_norm(bn: _BatchNorm, x: torch.Tensor, dims: Sequence[int], mask: Optional[torch.Tensor] = None,
               group=None) -> torch.Tensor:
    """``bn`` applied to ``x`` with batch statistics over ``dims``, only where ``mask`` (when given; ``x``
    must then be zero elsewhere), summed over every process of ``group`` when running distributed.

    The variance is a sum of squares about the global mean (a second all-reduce), as one process
    computes it, with no E[x²] − E[x]² cancellation. Statistics are in fp32 at least, also under
    AMP. Updates the running statistics in train mode; the output is zero where ``mask`` is.
    """
    shape = [1] * x.dim()
    shape[1] = x.shape[1]
    if not bn.training and bn.track_running_stats:
        mean, var = bn.running_mean, bn.running_var
        centred = x - mean.view(shape)
    else:
        dtype = torch.promote_types(x.dtype, torch.float32)
        xs = x.to(dtype) if mask is None else x.to(dtype) * mask
        local_count = (mask.to(dtype).sum().reshape(1) if mask is not None
                       else xs.new_tensor([x.numel() / x.shape[1]]))
        totals = _sum(torch.cat([xs.sum(dim=tuple(dims)), local_count]), group)
        # no active site anywhere (every patch masked): statistics 0 instead of 0/0 and running
        # statistics untouched, as BatchNorm1d on SparK's empty active set; the output is masked to zero
        seen = totals[-1] > 0
        count = totals[-1].clamp(min=1)  # stays on the device: no host sync per layer
        mean = totals[:-1] / count
        centred = xs - mean.view(shape)
        if mask is not None:
            centred = centred * mask
        var = _sum(centred.square().sum(dim=tuple(dims)), group) / count
        if bn.training and bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
                unbiased = var * (count / (count - 1).clamp(min=1))
                for stat, new in ((bn.running_mean, mean), (bn.running_var, unbiased)):
                    stat.copy_(torch.where(seen, stat * (1 - momentum) + new.detach().to(stat.dtype) * momentum, stat))
    scale = torch.rsqrt(var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    y = centred * scale.view(shape)
    if bn.affine:
        y = y + bn.bias.view(shape)
    y = y.to(x.dtype)
    return y if mask is None else y * mask


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
    def from_dense(cls, bn: _BatchNorm, **kwargs) -> "SparseBatchNorm2d":
        """The same layer (parameters, buffers, settings, mode); ``kwargs`` go to a subclass's constructor."""
        like = bn.weight if bn.affine else bn.running_mean
        factory = {"device": like.device, "dtype": like.dtype} if like is not None else {}
        sparse = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                     track_running_stats=bn.track_running_stats, **factory, **kwargs)
        sparse.load_state_dict(bn.state_dict())
        return sparse.train(bn.training)
