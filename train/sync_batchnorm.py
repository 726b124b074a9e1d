"""BatchNorm whose statistics span every process of a run, over active sites only.

torch's ``SyncBatchNorm`` refuses CPU tensors and knows nothing of masks, so this one all-reduces
the per-channel count, sum and sum of squared deviations itself, with a differentiable all-reduce
(``torch.distributed.nn.functional.all_reduce``: its backward all-reduces the gradients, so every
process's loss reaches every process's inputs through the shared statistics). It works with gloo on
the CPU and nccl on GPUs.

Two all-reduces per layer (sum and count, then squared deviations about the global mean) instead
of one of (count, sum, sum of squares): the variance is then computed as a sum of squares about the
mean, exactly as a single process computes it, with no E[x²] − E[x]² cancellation.

One module serves every BatchNorm of a SparK model (same parameters and buffers as BatchNorm2d,
so state dicts do not change):
- on SparseFeatures (the encoder's SparseBatchNorm2d, the densify norms): statistics over the rows;
- on a dense (B, C, H, W) map (the decoder): statistics over every site;
- on a dense map with a mask (the masked-dense reference encoder): statistics over active sites.
Outside a process group (one process) it computes exactly what the layer it replaced computes.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce

from ..features import SparseFeatures
from ..layers.norm import SparseBatchNorm2d
from ..reference import register_reference_rule


def _world(group) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _sum(t: torch.Tensor, group) -> torch.Tensor:
    return all_reduce(t, op=dist.ReduceOp.SUM, group=group) if _world(group) > 1 else t


def sync_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, dims: Sequence[int],
                    mask: Optional[torch.Tensor] = None, group=None) -> torch.Tensor:
    """Batch norm of ``x`` with statistics over ``dims`` of every process (and only where ``mask``)."""
    shape = [1] * x.dim()
    shape[1] = x.shape[1]
    if not bn.training and bn.track_running_stats:
        mean, var = bn.running_mean, bn.running_var
    else:
        dtype = torch.promote_types(x.dtype, torch.float32)  # statistics in fp32 at least, also under AMP
        xs = x.to(dtype) if mask is None else x.to(dtype) * mask
        local_count = (mask.to(dtype).sum().reshape(1) if mask is not None
                       else xs.new_tensor([x.numel() / x.shape[1]]))
        totals = _sum(torch.cat([xs.sum(dim=tuple(dims)), local_count]), group)
        seen = totals[-1] > 0  # no active site anywhere: statistics 0, running statistics untouched
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
    scale = torch.rsqrt(var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    y = (x - mean.view(shape)) * scale.view(shape)
    if bn.affine:
        y = y + bn.bias.view(shape)
    y = y.to(x.dtype)
    return y if mask is None else y * mask


class SparseSyncBatchNorm(SparseBatchNorm2d):
    """BatchNorm synchronised across processes, on active sites (see the module docstring)."""

    def __init__(self, *args, process_group=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 4):
            raise ValueError(f"expected (N, C) features or a (B, C, H, W) map, got shape {tuple(input.shape)}")

    def forward(self, x):  # type: ignore[override]
        if isinstance(x, SparseFeatures):
            return x.replace(sync_batch_norm(self, x.features, (0,), group=self.process_group))
        self._check_input_dim(x)
        return sync_batch_norm(self, x, (0, 2, 3) if x.dim() == 4 else (0,), group=self.process_group)

    def forward_masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """On a dense map that is zero at masked sites: statistics over the active ones."""
        return sync_batch_norm(self, x, (0, 2, 3), mask=mask, group=self.process_group)

    @classmethod
    def from_batch_norm(cls, bn: nn.modules.batchnorm._BatchNorm, process_group=None) -> "SparseSyncBatchNorm":
        like = bn.weight if bn.affine else bn.running_mean
        factory = {"device": like.device, "dtype": like.dtype} if like is not None else {}
        sync = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                   track_running_stats=bn.track_running_stats, process_group=process_group, **factory)
        sync.load_state_dict(bn.state_dict())
        return sync.train(bn.training)


register_reference_rule(SparseSyncBatchNorm, lambda m, x, masks, path: m.forward_masked(x, masks.like(x)))


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Replace every BatchNorm (sparse or dense, 1-D or 2-D) under ``module`` by SparseSyncBatchNorm, in place.

    Parameter and buffer names are unchanged, so checkpoints of synced and unsynced runs are
    interchangeable.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SparseSyncBatchNorm):
            setattr(module, name, SparseSyncBatchNorm.from_batch_norm(child, process_group))
        else:
            convert_sync_batchnorm(child, process_group)
    return module
