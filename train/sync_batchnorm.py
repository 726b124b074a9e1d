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
- on a dense map with a mask (the masked-dense reference encoder): statistics over active sites
  (the reference's BatchNorm rule passes the layer's ``process_group``; one routine,
  ``layers.norm.batch_norm``, computes all three).
Outside a process group (one process) it computes exactly what the layer it replaced computes.
"""
from __future__ import annotations

import torch
from torch import nn

from ..features import SparseFeatures
from ..layers.norm import SparseBatchNorm2d, batch_norm


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
            return x.replace(batch_norm(self, x.features, (0,), group=self.process_group))
        self._check_input_dim(x)
        return batch_norm(self, x, (0, 2, 3) if x.dim() == 4 else (0,), group=self.process_group)


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Replace every BatchNorm (sparse or dense, 1-D or 2-D) under ``module`` by SparseSyncBatchNorm, in place.

    Parameter and buffer names are unchanged, so checkpoints of synced and unsynced runs are
    interchangeable.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SparseSyncBatchNorm):
            setattr(module, name, SparseSyncBatchNorm.from_dense(child, process_group=process_group))
        else:
            convert_sync_batchnorm(child, process_group)
    return module
